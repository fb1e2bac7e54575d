//! External commands and child processes, always bounded in time: a command that overruns is
//! killed, a child that does not exit is SIGKILLed.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished external command did.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    /// Stdout as (lossy) UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as (lossy) UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Keeps every environment variable whose name starts with `prefix` (e.g. `CLUSTERCTL_`)
/// from reaching `cmd`: what it sees is only what the test sets.
pub fn without_env_prefix(cmd: &mut Command, prefix: &str) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with(prefix) {
            cmd.env_remove(name);
        }
    }
}

/// Runs a command (stdin closed, stdout and stderr captured) with a time bound; `Err` when it
/// could not start or overran (it is then killed). A non-zero exit is an `Ok` with that status.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput, String> {
    run_cmd_with_input(cmd, None, timeout)
}

/// As [`run_cmd`], with `input` written to the command's stdin (then closed); `None`: stdin
/// closed from the start.
pub fn run_cmd_with_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<CmdOutput, String> {
    let shown = format!("{cmd:?}");
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("failed to start {shown}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A command that exits without reading leaves a broken pipe: not an error here.
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &input);
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let status = wait_exit(&mut child, timeout);
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(CmdOutput {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{shown} did not finish within {timeout:?} (killed); stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// Runs `program args…` with a time bound and panics unless it exits 0.
pub fn must_run(program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    must_succeed(Command::new(program).args(args), timeout)
}

/// Runs a command with a time bound and panics, with the command and its output, unless it
/// exits 0.
pub fn must_succeed(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let out = run_cmd(cmd, timeout).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout_text(),
        out.stderr_text()
    );
    out
}

/// A probe by a command (a daemon's `info`, a tool's `--version`): `Ok` when it runs within
/// 30 s and exits 0; `Err` with the command and what it printed on stderr otherwise.
pub fn succeeds(cmd: &mut Command) -> Result<(), String> {
    let out = run_cmd(cmd, Duration::from_secs(30))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            out.stderr_text().trim()
        ))
    }
}

/// The digest containerd recorded for `reference`, from the output of `ctr images ls`.
/// Panics, with the listing, when the reference or its digest is not there.
pub fn ctr_image_digest(listing: &str, reference: &str) -> String {
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} not in containerd's images:\n{listing}"));
    line.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {line:?}"))
        .to_string()
}

/// Waits up to `timeout` for a child to exit (polling every 10 ms) and returns its status;
/// `None` when it was still running — it is then SIGKILLed and reaped, so it is stopped either
/// way.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_cmd_captures_output_and_status() {
        let out = run_cmd(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_text(), "err\n");
    }

    #[test]
    fn run_cmd_kills_an_overrunning_command() {
        let e = run_cmd(
            Command::new("sh").args(["-c", "exec sleep 30"]),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
    }
}
