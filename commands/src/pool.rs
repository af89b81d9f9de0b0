//! The one way pools are built: [`options`], and beside a pool built so, [`for_single_statements`].
//!
//! sqlx 0.8 (0.8.6 is the last 0.8 release) can hand a pooled PostgreSQL connection back
//! inside a transaction (sqlx issues 4385/4393; the fix, PR 4394, was merged on the 0.9 line):
//! `begin()` sends `BEGIN` and counts the transaction only once the server answered, so a
//! future dropped in between (a timeout, a `select!`, an HTTP client going away mid-request)
//! leaves the session in a transaction that nothing rolls back, and the pool's check on
//! release (a bare sync) does not look at the transaction status. The next borrower's
//! statements would run, and hold their locks, inside that stale transaction. postgres-es 0.5
//! pins sqlx 0.8, so the fixed release is out of reach.
//!
//! The defence: before a pooled connection is handed out, it is asked whether it is inside a
//! transaction block, and one that is gets closed instead (the pool then takes another or
//! opens a new one). Outside a block every statement is its own transaction, so its
//! `statement_timestamp()` is its `transaction_timestamp()`; inside one, the transaction
//! began with an earlier statement — a round trip earlier at least, since sqlx waits for the
//! `BEGIN`'s answer before sending the next query. (A transaction that sqlx knows of and
//! dropped has its `ROLLBACK` queued; it reaches the server before the check.)
//!
//! The check replaces sqlx's own ping before handing out an idle connection
//! (`test_before_acquire`, a bare sync): it proves the connection alive just as well, so a
//! checkout costs the round trips it did before. A check on release instead would have added
//! one to every checkout (measured: up to twice the time per trivial query on a busy pool).
//!
//! Only a connection that sat idle in the pool pays the check (`pool.before_acquire` in the
//! bench's stage profile).
//!
//! The command bus's append needs no check, and pays none: its connections come from a pool
//! of their own ([`for_single_statements`]) on which nothing ever sends `BEGIN` — each use is
//! one autocommit statement — so none can come back inside a transaction. That takes a round
//! trip off every command. What the check also caught there, a connection that died while
//! idle (the server restarted), fails the append instead, with its outcome unknown; the bus
//! settles that by the commands' receipts and tries again (`crate::bus`), and sqlx closes the
//! connection when its release ping fails.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgConnection, PgPool, Row};
use tracing::Instrument;

/// Pool options with the check; callers add sizes and timeouts.
pub fn options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, _meta| {
            Box::pin(
                not_in_transaction(conn).instrument(tracing::debug_span!("pool.before_acquire")),
            )
        })
}

/// A pool on `pool`'s server, of its size, for code that only ever sends single statements
/// outside any transaction (see the module): no check before a checkout. Connects lazily, so
/// a bus that never appends (the ports' reader) opens nothing. Needs a tokio runtime.
pub fn for_single_statements(pool: &PgPool) -> PgPool {
    PgPoolOptions::new()
        .max_connections(pool.options().get_max_connections())
        .acquire_timeout(pool.options().get_acquire_timeout())
        .test_before_acquire(false)
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// `true` when `conn` is outside any transaction block and may be handed out; an error (a
/// dead connection, or an aborted transaction, which answers every query with one) makes the
/// pool close it too.
pub async fn not_in_transaction(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    // A bare string goes by the simple protocol: one message, one statement timestamp. (In
    // the extended protocol Bind and Execute each restart `statement_timestamp()`.)
    let row = conn
        .fetch_one("SELECT transaction_timestamp() = statement_timestamp()")
        .await?;
    let idle: bool = row.try_get(0)?;
    if !idle {
        tracing::warn!(
            "a pooled connection was left inside a transaction \
             (a cancelled BEGIN?); closing it"
        );
    }
    Ok(idle)
}
