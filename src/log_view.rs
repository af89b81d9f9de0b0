//! `teachin events`: the operator's view of the event log, one JSON object per line, in the
//! order projections consume it. Reads through the same gap-safe reader as the projections.

use crate::cli::EventsArgs;
use std::io::Write;
use std::time::Duration;
use teachin_projections::{EventLog, LogPosition, LoggedEvent};

const BATCH: i64 = 500;
/// How long `--follow` waits for a notification before it polls anyway.
const POLL_EVERY: Duration = Duration::from_secs(1);

pub async fn print(log: EventLog, args: EventsArgs) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut remaining = args.limit.unwrap_or(usize::MAX);

    if let Some(stream) = &args.stream {
        let mut after_sequence = 0;
        let mut listener = if args.follow {
            Some(log.listen().await?)
        } else {
            None
        };
        loop {
            let events = log
                .read_stream(&stream.aggregate_type, &stream.aggregate_id, after_sequence)
                .await?;
            if let Some(last) = events.last() {
                after_sequence = last.sequence;
            }
            if !emit(&mut out, &events, &mut remaining)? {
                return Ok(());
            }
            match listener.as_mut() {
                Some(listener) => wait(listener).await,
                None => return Ok(()),
            }
        }
    }

    let mut checkpoint = args.after.unwrap_or(LogPosition::START);
    let mut listener = if args.follow {
        Some(log.listen().await?)
    } else {
        None
    };
    loop {
        let events = log.read_after(checkpoint, BATCH).await?;
        if let Some(last) = events.last() {
            checkpoint = last.position;
        }
        if !emit(&mut out, &events, &mut remaining)? {
            return Ok(());
        }
        if events.len() as i64 == BATCH {
            continue;
        }
        match listener.as_mut() {
            Some(listener) => wait(listener).await,
            None => return Ok(()),
        }
    }
}

/// Writes events; false once the limit is reached.
fn emit(
    out: &mut impl Write,
    events: &[LoggedEvent],
    remaining: &mut usize,
) -> anyhow::Result<bool> {
    for event in events {
        if *remaining == 0 {
            break;
        }
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")?;
        *remaining -= 1;
    }
    out.flush()?;
    Ok(*remaining > 0)
}

async fn wait(listener: &mut sqlx::postgres::PgListener) {
    // Either a commit notification or the poll interval: both mean "read again".
    let _ = tokio::time::timeout(POLL_EVERY, listener.recv()).await;
}
