//! `teachin admin create`: bootstraps an admin account. Self sign-up only ever creates
//! students, so the first admin has to come from an operator; the command is issued as the
//! `System` actor, and appears in the log like any other registration.

use crate::cli::CreateAdminArgs;
use crate::config::Settings;
use anyhow::{bail, Context};
use std::io::BufRead;
use teachin_commands::bus::BusSettings;
use teachin_commands::{command_bus, CommandContext, CommandError, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::user::{Language, User, UserCommand};

pub async fn create(
    pool: sqlx::PgPool,
    settings: &Settings,
    args: CreateAdminArgs,
) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin)?;
    if let Err(rule) = teachin_api::auth::password::check_strength(&password) {
        bail!("{rule}");
    }
    let bus = command_bus(
        pool,
        PortSecrets {
            claims_hash_key: settings.lookup_hash_key.clone(),
        },
        BusSettings::default(),
    );
    let user_id = UserId::new();
    let command = UserCommand::Register {
        user_id,
        role: Role::Admin,
        first_name: args.first_name,
        last_name: args.last_name,
        email: args.email,
        password_hash: teachin_api::auth::password::hash(&password),
        preferred_language: Language::En,
        hebrew_level: None,
        interests: Vec::new(),
        registered_by: Actor::System,
    };
    let context = CommandContext::new(Actor::System, "cli:admin-create");
    match bus
        .execute::<User>(&user_id.to_string(), command, &context)
        .await
    {
        Ok(_) => {
            println!("{user_id}");
            Ok(())
        }
        Err(CommandError::Rejected(rejection)) => bail!("{rejection}"),
        Err(other) => Err(other).context("creating the admin"),
    }
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    std::env::var("TEACHIN_ADMIN_PASSWORD")
        .map_err(|_| anyhow::anyhow!("give the password on standard input with --password-stdin, or in TEACHIN_ADMIN_PASSWORD"))
}
