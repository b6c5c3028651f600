//! plugnet-shim library (placeholder until its issue lands).
