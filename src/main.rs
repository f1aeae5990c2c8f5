use std::process::ExitCode;

fn main() -> ExitCode {
    tr118::cli::main()
}
