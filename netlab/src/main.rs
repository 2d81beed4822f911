//! The `netlab` binary: everything is in the library's [`netlab::cli`].

fn main() -> std::process::ExitCode {
    let code = netlab::cli::main_with(std::env::args_os());
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
