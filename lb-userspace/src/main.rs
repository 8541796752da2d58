//! The `xlb` command (see [`xlb::cli`]).

fn main() -> std::process::ExitCode {
    xlb::cli::main()
}
