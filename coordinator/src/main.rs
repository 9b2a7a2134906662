//! `hostshift`: the coordinator CLI. Everything happens in [`hostshift::cli::main`].

fn main() -> std::process::ExitCode {
    hostshift::cli::main()
}
