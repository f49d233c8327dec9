//! Running commands with errors that name the command and carry its stderr.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Runs `argv` and fails with its stderr when it exits non-zero.
pub fn run(argv: &[&str]) -> anyhow::Result<String> {
    run_with_input(argv, None)
}

/// Runs `argv` with `input` on stdin.
pub fn run_with_input(argv: &[&str], input: Option<&str>) -> anyhow::Result<String> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing to {prog}"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` and reports only whether it succeeded (for probes and best-effort cleanup).
pub fn ok(argv: &[&str]) -> bool {
    let Some((prog, args)) = argv.split_first() else {
        return false;
    };
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `argv` and returns its exit code and stdout, whatever the code.
pub fn run_code(argv: &[&str]) -> anyhow::Result<(i32, String)> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {prog}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Runs `argv` with inherited stdio (for long builds whose progress the user should see).
pub fn stream(argv: &[&str]) -> anyhow::Result<()> {
    stream_env(argv, &[])
}

pub fn stream_env(argv: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let status = Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("starting {prog}"))?;
    if !status.success() {
        bail!("`{}` failed ({status})", argv.join(" "));
    }
    Ok(())
}

/// Whether `prog` is an executable on PATH.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(prog);
            p.metadata().is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt as _;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}
