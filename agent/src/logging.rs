//! Logs: tracing to stderr (journald keeps it under systemd). Every line about a network,
//! block or host names it as a field (`network=… block=… host=…`).

/// Install the subscriber; `filter` is a level or a tracing filter (bad ones fall back to info).
pub fn init(filter: &str) {
    // hickory-server logs every query at info: only its warnings unless asked for.
    let quiet = |f: &str| {
        if f.contains("hickory") {
            f.to_string()
        } else {
            format!("{f},hickory_server=warn,hickory_proto=warn")
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(quiet(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(quiet("info")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
