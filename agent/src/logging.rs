//! Logs: tracing to stderr (journald keeps it under systemd). Every line about a network,
//! block or host names it as a field (`network=… block=… host=…`).

/// Install the subscriber; `filter` is a level or a tracing filter (bad ones fall back to info).
pub fn init(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
