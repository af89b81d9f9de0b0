//! The people a run needs: an admin, teachers and students, registered through the real
//! command bus (the same `UserCommand::Register` sign-up issues, so every one has a
//! personal-data key and unique-email claim), with access tokens minted by the API's own
//! token module under the secrets the manager was started with.
//!
//! Why not `signUp`: each sign-up hashes a password with argon2 (by design, slow), which for
//! a thousand students would measure argon2, not the system. One hash is computed and shared;
//! nobody logs in with it.

use super::deployment::Secrets;
use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use teachin_api::auth::tokens::AccessTokens;
use teachin_commands::bus::BusSettings;
use teachin_commands::{command_bus, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::user::{Language, User, UserCommand};

/// Tokens outlive the longest run (the API's own lifetime is 15 minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(4 * 60 * 60);
/// Registrations in flight at once.
const REGISTRATION_CONCURRENCY: usize = 16;

/// One registered user and a valid access token for them.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: UserId,
    pub token: String,
}

pub struct Population {
    pub admin: Member,
    pub teachers: Vec<Member>,
    pub students: Vec<Member>,
    /// How long registering everyone and waiting for the read model took.
    pub elapsed: Duration,
}

/// Registers everyone, then waits until the `users` read model shows them all.
pub async fn enroll(
    pool: &PgPool,
    secrets: &Secrets,
    students: usize,
    teachers: usize,
) -> anyhow::Result<Population> {
    let started = Instant::now();
    let bus = command_bus(
        pool.clone(),
        PortSecrets {
            claims_hash_key: secrets.lookup_hash_key.clone().into_bytes(),
        },
        BusSettings::default(),
    );
    let tokens = AccessTokens::new(
        secrets.jwt_secret.as_bytes(),
        &secrets.jwt_issuer,
        &secrets.jwt_audience,
    )?
    .with_ttl(TOKEN_LIFETIME);
    let password_hash = teachin_api::auth::password::hash(&uuid::Uuid::new_v4().to_string());
    let roles = std::iter::once(Role::Admin)
        .chain(std::iter::repeat_n(Role::Teacher, teachers))
        .chain(std::iter::repeat_n(Role::Student, students));
    let members: Vec<(Role, Member)> = futures::stream::iter(roles.enumerate())
        .map(|(index, role)| {
            let (bus, tokens, password_hash) = (&bus, &tokens, &password_hash);
            async move {
                let user_id = UserId::new();
                let command = UserCommand::Register {
                    user_id,
                    role,
                    first_name: format!("Bench{index}"),
                    last_name: role.as_str().to_string(),
                    email: format!("bench-{}@bench.teachin.example", user_id.0.simple()),
                    password_hash: password_hash.clone(),
                    preferred_language: Language::En,
                    hebrew_level: None,
                    interests: Vec::new(),
                    registered_by: Actor::System,
                };
                let context = CommandContext::new(Actor::System, "bench:enroll");
                bus.execute::<User>(&user_id.to_string(), command, &context)
                    .await
                    .map_err(|e| anyhow::anyhow!("registering a bench {role:?}: {e}"))?;
                let token = tokens.issue(user_id, role).token;
                anyhow::Ok((role, Member { id: user_id, token }))
            }
        })
        .buffered(REGISTRATION_CONCURRENCY)
        .try_collect()
        .await?;
    wait_for_read_model(pool, &members).await?;
    let mut admin = None;
    let (mut teachers, mut students) = (Vec::new(), Vec::new());
    for (role, member) in members {
        match role {
            Role::Admin => admin = Some(member),
            Role::Teacher => teachers.push(member),
            _ => students.push(member),
        }
    }
    Ok(Population {
        admin: admin.context("the admin was registered")?,
        teachers,
        students,
        elapsed: started.elapsed(),
    })
}

/// The accessor projects registrations asynchronously; the run starts only when the read
/// side knows everyone (the portals' reads and authorization checks go through it).
async fn wait_for_read_model(pool: &PgPool, members: &[(Role, Member)]) -> anyhow::Result<()> {
    let ids: Vec<uuid::Uuid> = members.iter().map(|(_, m)| m.id.0).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let projected: i64 =
            sqlx::query_scalar("SELECT count(*) FROM read_model.users WHERE user_id = ANY($1)")
                .bind(&ids)
                .fetch_one(pool)
                .await?;
        if projected as usize == ids.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the users read model shows {projected} of {} bench users after 120 s",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
