//! plugnet
pub mod firewall;
