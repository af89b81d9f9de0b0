//! Section 5, realtime: how soon a committed change reaches a browser. Every student holds a
//! SignalR connection to the manager's hub; an admin then assigns each student to a teacher
//! (`assignStudent`), paced. The accessor's feed turns each `StudentAssigned` into a
//! `NotificationMessage` for that student (`teaching_pushes` in the feed mapping), published on
//! Redis and delivered by the manager that holds the socket.
//!
//! Latency per student = the instant the push arrived on the student's connection − the
//! instant the mutation's HTTP response arrived (the event was committed by then). Both
//! instants are taken in this process on one monotonic clock.

use super::client::{Manager, Outcome};
use super::population::{Member, Population};
use super::signalr::HubConnection;
use super::Latencies;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use teachin_domain::ids::UserId;
use tokio::sync::watch;
use tokio::time::Instant;

/// The hub method the feed uses for a teacher's assignment (see `teaching_pushes`).
const NOTIFICATION_MESSAGE: &str = "NotificationMessage";
/// Connections being opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// How long to wait for the last pushes after the last assignment answered.
const DELIVERY_GRACE: Duration = Duration::from_secs(15);

const ASSIGN_STUDENT: &str = "mutation Assign($teacherId: UUID!, $studentId: UUID!) { \
    assignStudent(teacherId: $teacherId, studentId: $studentId) { id } }";

#[derive(Debug, Clone, Serialize)]
pub struct RealtimeFigures {
    pub connections_requested: usize,
    pub connections_open: usize,
    /// Failed connection attempts by reason.
    pub connect_failures: BTreeMap<String, usize>,
    pub connect_seconds: f64,
    pub assignments_per_second: u32,
    pub assignments_ok: usize,
    pub assignment_errors: BTreeMap<String, usize>,
    /// Pushes that arrived for an assignment that committed.
    pub delivered: usize,
    /// Assignments that committed to a student whose connection was open.
    pub expected: usize,
    /// Commit (HTTP response) → delivery on the student's connection.
    pub latency_ms: Latencies,
}

pub fn method(connections: usize, rate: u32, teachers: usize) -> String {
    format!(
        "{connections} students each open a SignalR connection to the manager (negotiate v1 with \
         a bearer JWT, WebSocket with access_token, JSON handshake; pings answered; up to \
         {CONNECT_CONCURRENCY} connecting at once). Then an admin issues `assignStudent` for every \
         student, open-loop at {rate}/s, round-robin over {teachers} teachers; each student \
         expects a `{NOTIFICATION_MESSAGE}` naming its teacher. Latency = push received on the \
         student's connection − the mutation's HTTP response received, on this process's \
         monotonic clock. Delivered/expected counts pushes for assignments that committed."
    )
}

pub async fn run(
    manager: &Manager,
    population: &Population,
    connections: usize,
    rate: u32,
) -> anyhow::Result<RealtimeFigures> {
    let students = &population.students[..connections.min(population.students.len())];
    anyhow::ensure!(!population.teachers.is_empty(), "no teachers enrolled");
    let assignments: Vec<(UserId, UserId)> = students
        .iter()
        .enumerate()
        .map(|(i, s)| (population.teachers[i % population.teachers.len()].id, s.id))
        .collect();
    let teacher_of: HashMap<UserId, UserId> = assignments.iter().map(|&(t, s)| (s, t)).collect();

    let delivered: Arc<Mutex<HashMap<UserId, Instant>>> = Default::default();
    let (stop, stopped) = watch::channel(false);
    let connect_started = Instant::now();
    let opened: Vec<(UserId, Result<tokio::task::JoinHandle<()>, String>)> =
        futures::stream::iter(students.iter().cloned())
            .map(|student| {
                let teacher = teacher_of[&student.id];
                let id = student.id;
                let holding = hold(
                    manager.clone(),
                    student,
                    teacher,
                    delivered.clone(),
                    stopped.clone(),
                );
                async move { (id, holding.await) }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let mut connect_failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut holders = Vec::new();
    let mut connected = std::collections::HashSet::new();
    for (student, result) in opened {
        match result {
            Ok(holder) => {
                holders.push(holder);
                connected.insert(student);
            }
            Err(reason) => *connect_failures.entry(reason).or_default() += 1,
        }
    }
    let connections_open = holders.len();
    println!(
        "  realtime: {connections_open}/{} connections open in {connect_seconds:.1} s",
        students.len()
    );

    let committed = assign_all(manager, &population.admin, &assignments, rate).await;
    let mut assignment_errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut commits: HashMap<UserId, Instant> = HashMap::new();
    for (student, result) in committed {
        match result {
            Ok(at) => {
                commits.insert(student, at);
            }
            Err(code) => *assignment_errors.entry(code).or_default() += 1,
        }
    }

    // Only a student whose connection is open can be pushed to.
    let expected = commits.keys().filter(|s| connected.contains(s)).count();
    let deadline = Instant::now() + DELIVERY_GRACE;
    while Instant::now() < deadline {
        let arrived = delivered.lock().expect("delivery lock").len();
        if arrived >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    for holder in holders {
        let _ = holder.await;
    }

    let delivered = delivered.lock().expect("delivery lock").clone();
    let latencies: Vec<f64> = commits
        .iter()
        .filter_map(|(student, committed)| {
            let arrived = delivered.get(student)?;
            Some(signed_ms(*arrived, *committed))
        })
        .collect();
    Ok(RealtimeFigures {
        connections_requested: students.len(),
        connections_open,
        connect_failures,
        connect_seconds,
        assignments_per_second: rate,
        assignments_ok: commits.len(),
        assignment_errors,
        delivered: latencies.len(),
        expected,
        latency_ms: Latencies::of(latencies),
    })
}

/// `later − earlier` in ms, negative if the push arrived before the response did.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1000.0
    } else {
        -((earlier - later).as_secs_f64() * 1000.0)
    }
}

/// Opens `student`'s connection, then keeps it on a task that notes when the assignment to
/// `teacher` is pushed, until told to stop. Err: why the connection did not open.
async fn hold(
    manager: Manager,
    student: Member,
    teacher: UserId,
    delivered: Arc<Mutex<HashMap<UserId, Instant>>>,
    mut stopped: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut connection = HubConnection::connect(manager.http(), &manager.base, &student.token)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let expected_teacher = teacher.to_string();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => break,
                invocation = connection.next_invocation() => match invocation {
                    Ok(Some(invocation)) => {
                        let for_this_assignment = invocation.target == NOTIFICATION_MESSAGE
                            && invocation.arguments.first().and_then(|a| a["teacherId"].as_str())
                                == Some(expected_teacher.as_str());
                        if for_this_assignment {
                            let now = Instant::now();
                            delivered.lock().expect("delivery lock").entry(student.id).or_insert(now);
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
            }
        }
        connection.close().await;
    }))
}

/// Issues every assignment on a fixed schedule; returns, per student, when the response
/// arrived (ok) or the error code.
async fn assign_all(
    manager: &Manager,
    admin: &Member,
    assignments: &[(UserId, UserId)],
    rate: u32,
) -> Vec<(UserId, Result<Instant, String>)> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    for &(teacher, student) in assignments {
        ticker.tick().await;
        let (manager, token) = (manager.clone(), admin.token.clone());
        requests.spawn(async move {
            let variables = json!({ "teacherId": teacher.0, "studentId": student.0 });
            let outcome = manager.mutate(&token, ASSIGN_STUDENT, variables).await;
            let answered = Instant::now();
            match outcome {
                Outcome::Ok => (student, Ok(answered)),
                Outcome::Failed(code) => (student, Err(code)),
            }
        });
    }
    let mut results = Vec::new();
    while let Some(result) = requests.join_next().await {
        if let Ok(result) = result {
            results.push(result);
        }
    }
    results
}
