//! `plugnet`: the CNI plugin when `CNI_COMMAND` is set, else the runner CLI (`plugnet::cli`).

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() {
        std::process::exit(plugnet::cli::main(std::env::args().collect()));
    }
}
