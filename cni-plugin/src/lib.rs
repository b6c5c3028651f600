//! plugnet
