//! The queues' health in the Prometheus text format, for `/metrics`: depth, the age of the
//! oldest waiting message, and dead letters per queue — what KEDA scales on and what the
//! alerts watch. Read from the bus at scrape time, so every replica reports the same truth.

use super::{Bus, QueueName};
use std::fmt::Write;

/// The queue gauges; a queue whose figures cannot be read is left out (and logged), so one
/// unreachable backend does not blank the whole scrape.
pub async fn render(bus: &dyn Bus) -> String {
    let (mut depth, mut age, mut dead) = (String::new(), String::new(), String::new());
    // Concurrently: on Service Bus each queue costs a management call and an AMQP peek, and
    // one after another they would eat into the scrape's timeout.
    let figures = futures::future::join_all(QueueName::ALL.map(|queue| bus.stats(queue))).await;
    for (queue, figures) in QueueName::ALL.into_iter().zip(figures) {
        match figures {
            Ok(stats) => {
                let q = queue.as_str();
                let _ = writeln!(
                    depth,
                    "teachin_queue_depth{{queue=\"{q}\"}} {}",
                    stats.depth
                );
                if let Some(oldest) = stats.oldest_age() {
                    let _ = writeln!(
                        age,
                        "teachin_queue_oldest_message_age_seconds{{queue=\"{q}\"}} {:.3}",
                        oldest.as_secs_f64()
                    );
                }
                let _ = writeln!(
                    dead,
                    "teachin_queue_dead_letters{{queue=\"{q}\"}} {}",
                    stats.dead_letters
                );
            }
            Err(e) => tracing::warn!(queue = %queue, error = %e, "queue figures unavailable"),
        }
    }
    format!(
        "# HELP teachin_queue_depth Messages waiting or being handled.\n\
         # TYPE teachin_queue_depth gauge\n{depth}\
         # HELP teachin_queue_oldest_message_age_seconds How long the oldest message has waited.\n\
         # TYPE teachin_queue_oldest_message_age_seconds gauge\n{age}\
         # HELP teachin_queue_dead_letters Messages set aside with a reason (see `teachin queues dead-letter list`).\n\
         # TYPE teachin_queue_dead_letters gauge\n{dead}"
    )
}
