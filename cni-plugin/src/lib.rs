//! plugnet
pub mod firewall;
pub mod tc;
