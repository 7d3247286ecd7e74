//! Man pages and shell completions, generated from each program's own clap definition so
//! they never drift from `--help`. `scripts/install` asks each binary for them with the
//! hidden first argument `--generate-docs DIR`.

use std::io;
use std::path::Path;

use clap_complete::Shell;

/// The hidden argument that makes a binary write its documentation instead of running.
pub const GENERATE_DOCS: &str = "--generate-docs";

/// If the command line is `BIN --generate-docs DIR`, writes `DIR/man1/BIN.1` (and one page
/// per subcommand, `BIN-SUB.1`) and `DIR/completions/{bash,zsh,fish}/...`, then exits.
/// Bash completions are named `BIN.bash` (install them as `BIN`). Exits 0 when written, 1
/// with one line on stderr otherwise; returns for any other command line.
pub fn generate_if_asked<P: clap::CommandFactory>(bin: &'static str) {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().as_deref() != Some(GENERATE_DOCS.as_ref()) {
        return;
    }
    let Some(dir) = argv.next() else {
        eprintln!("{bin}: {GENERATE_DOCS} needs a directory");
        std::process::exit(2);
    };
    match generate(P::command().name(bin).bin_name(bin), Path::new(&dir)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!(
                "{bin}: cannot write documentation into {}: {e}",
                dir.display()
            );
            std::process::exit(1);
        }
    }
}

/// Writes the man pages and the bash, zsh and fish completions of `cmd` under `dir`.
///
/// # Errors
/// Any failure to create or write a file.
pub fn generate(mut cmd: clap::Command, dir: &Path) -> io::Result<()> {
    let man = dir.join("man1");
    std::fs::create_dir_all(&man)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let bin = cmd.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let out = dir.join("completions").join(shell.to_string());
        std::fs::create_dir_all(&out)?;
        clap_complete::generate_to(shell, &mut cmd, &bin, &out)?;
    }
    Ok(())
}
