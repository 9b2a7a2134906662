//! Runs one configured hook and turns its output into a bounded stream of events.

use std::time::Duration;

use hostshift_proto::v1::{HookEvent, HookExit, hook_event::Event};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::HookConfig;
use crate::error::AgentError;
use crate::process::{Cmd, RunAs};

/// Events buffered between the hook and a slow client; the hook blocks (backpressure) beyond.
/// Worst case memory: `EVENT_QUEUE × OUTPUT_CHUNK` = 256 KiB per running hook.
pub const EVENT_QUEUE: usize = 16;
/// Bytes per output event.
pub const OUTPUT_CHUNK: usize = 16 * 1024;

/// The command for a hook, exactly as configured.
///
/// # Errors
/// When the hook's user does not exist.
pub fn command(hook: &HookConfig) -> Result<Cmd, AgentError> {
    let mut cmd = Cmd::new("/bin/sh")
        .arg("-c")
        .arg(&hook.command)
        .timeout(Duration::from_secs(hook.timeout_secs));
    if let Some(u) = &hook.user {
        cmd = cmd.run_as(RunAs::lookup(u)?);
    }
    if let Some(d) = &hook.cwd {
        cmd = cmd.cwd(d);
    }
    for (k, v) in &hook.env {
        cmd = cmd.env(k, v);
    }
    Ok(cmd)
}

async fn pump(
    r: Option<impl AsyncRead + Unpin>,
    tx: mpsc::Sender<Result<HookEvent, Status>>,
    wrap: fn(Vec<u8>) -> Event,
) {
    let Some(mut r) = r else { return };
    let mut buf = vec![0u8; OUTPUT_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let ev = HookEvent {
                    event: Some(wrap(buf[..n].to_vec())),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return; // client went away; the waiter notices and terminates the hook.
                }
            }
        }
    }
}

/// Runs `cmd`, sending output and then the exit into `tx`. Stops the hook (SIGTERM, then
/// SIGKILL) when `cancel` fires or the client disconnects.
pub async fn run(
    name: String,
    cmd: Cmd,
    tx: mpsc::Sender<Result<HookEvent, Status>>,
    cancel: CancellationToken,
) {
    let mut running = match cmd.spawn() {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    };
    tracing::info!(hook = %name, "hook started");
    let out = pump(running.take_stdout(), tx.clone(), Event::Stdout);
    let err = pump(running.take_stderr(), tx.clone(), Event::Stderr);
    let tx_closed = tx.clone();
    let wait = async {
        tokio::select! {
            r = running.wait(&cancel) => r,
            () = tx_closed.closed() => {
                running.terminate().await;
                Err(AgentError::Cancelled)
            }
        }
    };
    let (exit, (), ()) = tokio::join!(wait, out, err);
    match exit {
        Ok(exit) => {
            tracing::info!(hook = %name, status = %exit.describe(), "hook finished");
            let ev = HookEvent {
                event: Some(Event::Exit(HookExit {
                    code: exit.code.unwrap_or(-1),
                    signal: exit.signal.unwrap_or(0),
                    duration_ms: exit.duration.as_millis() as u64,
                    timed_out: exit.timed_out,
                })),
            };
            let _ = tx.send(Ok(ev)).await;
        }
        Err(e) => {
            tracing::warn!(hook = %name, error = %e, "hook stopped");
            let _ = tx.send(Err(e.into())).await;
        }
    }
}
