use clap::Parser;

fn main() -> std::process::ExitCode {
    continuum::cli::Cli::parse().run()
}
