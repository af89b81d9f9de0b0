//! A person's account: who they are, how they sign in, what they are learning — and their
//! right to be forgotten.
//!
//! Everything that identifies a person (names, email, password hash, interests) is sealed
//! with that person's own key before it is written to an event, so forgetting someone means
//! shredding one key: the log stays immutable and their data turns into noise. The state
//! kept here therefore holds sealed values only; the decisions it makes rest on roles, flags
//! and paths, never on the plaintext.
//!
//! No single account can know whether an email is already in use by another, so the email
//! is claimed through the [`crate::services::UniqueClaims`] port when the account is
//! registered and released when it is erased.
//!
//! Unlike the original, self sign-up creates students only, and only an admin creates a
//! teacher or an admin or changes anyone's role.

use crate::actor::{Actor, Role};
use crate::error::{DomainError, ErrorKind};
use crate::ids::UserId;
use crate::personal_data::Sealed;
use crate::services::{ClaimOutcome, ClaimScope, DomainServices, PortError};
use crate::text;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// Longest first or last name, in characters.
pub const NAME_MAX_CHARS: usize = 100;
/// Longest email address, in characters.
pub const EMAIL_MAX_CHARS: usize = 100;
/// Most interests a student may list.
pub const INTERESTS_MAX: usize = 20;
/// Longest single interest, in characters.
pub const INTEREST_MAX_CHARS: usize = 50;
/// Longest avatar blob path, in characters.
pub const AVATAR_PATH_MAX_CHARS: usize = 255;
/// The image types an avatar may have.
pub const AVATAR_CONTENT_TYPES: [&str; 3] = ["image/jpeg", "image/png", "image/webp"];
/// Longest password hash accepted; PHC strings of the usual algorithms are far shorter.
const PASSWORD_HASH_MAX_LEN: usize = 512;

/// The language a person reads the portal in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum Language {
    #[default]
    En,
    He,
}

impl Language {
    /// Reads a language preference the way the original read `Accept-Language`: Hebrew when
    /// the first (preferred) tag is Hebrew, English for anything else — including nothing.
    pub fn parse(value: &str) -> Language {
        let preferred = value.split(',').next().unwrap_or_default();
        let tag = preferred.split(';').next().unwrap_or_default().trim();
        let primary = tag.split(['-', '_']).next().unwrap_or_default();
        // `iw` is the retired code for Hebrew that some platforms still send.
        if primary.eq_ignore_ascii_case("he") || primary.eq_ignore_ascii_case("iw") {
            Language::He
        } else {
            Language::En
        }
    }

    /// The two-letter code the portals use.
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::He => "he",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// How well a student already knows Hebrew; it steers the exercises they are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum HebrewLevel {
    #[default]
    Beginner,
    Intermediate,
    Advanced,
    Fluent,
}

impl HebrewLevel {
    /// The spelling the original stored and the portals send.
    pub fn as_str(self) -> &'static str {
        match self {
            HebrewLevel::Beginner => "beginner",
            HebrewLevel::Intermediate => "intermediate",
            HebrewLevel::Advanced => "advanced",
            HebrewLevel::Fluent => "fluent",
        }
    }
}

impl fmt::Display for HebrewLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HebrewLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "beginner" => Ok(HebrewLevel::Beginner),
            "intermediate" => Ok(HebrewLevel::Intermediate),
            "advanced" => Ok(HebrewLevel::Advanced),
            "fluent" => Ok(HebrewLevel::Fluent),
            other => Err(format!(
                "unknown Hebrew level `{other}` (expected beginner, intermediate, advanced or fluent)"
            )),
        }
    }
}

/// An email address in the one form used for sign-in and uniqueness: trimmed and lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Normalises and checks an address. The check is deliberately simple — one `@`, a
    /// local part, a domain with a dot, no spaces — because only a sent email proves an
    /// address; this only catches typing mistakes.
    pub fn parse(raw: &str) -> Result<EmailAddress, UserError> {
        let lowered = raw.trim().to_lowercase();
        let address = text::bounded(&lowered, EMAIL_MAX_CHARS).map_err(|p| {
            invalid(
                "email",
                p.reason("an email address is required", "an email address"),
            )
        })?;
        let well_formed = match address.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !address.chars().any(char::is_whitespace)
            }
            None => false,
        };
        if !well_formed {
            return Err(invalid("email", "this is not a valid email address"));
        }
        Ok(EmailAddress(address.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A confirmed profile picture: where the blob is and what kind of image it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Avatar {
    pub blob_path: String,
    pub content_type: String,
}

/// One person's account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: UserId,
    registered: bool,
    erased: bool,
    role: Role,
    /// The sealed address as registered; forgotten on erasure.
    email: Option<Sealed>,
    preferred_language: Language,
    /// Students only.
    hebrew_level: Option<HebrewLevel>,
    /// Students only.
    interests: Option<Sealed>,
    avatar: Option<Avatar>,
    /// The sealed PHC string sign-in checks a password against; forgotten on erasure.
    #[serde(default)]
    password_hash: Option<Sealed>,
}

impl User {
    pub fn id(&self) -> UserId {
        self.id
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    pub fn is_erased(&self) -> bool {
        self.erased
    }

    /// The sealed password hash, for the API to open and verify a sign-in against.
    pub fn password_hash(&self) -> Option<&Sealed> {
        self.password_hash.as_ref()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn preferred_language(&self) -> Language {
        self.preferred_language
    }

    pub fn hebrew_level(&self) -> Option<HebrewLevel> {
        self.hebrew_level
    }

    pub fn avatar(&self) -> Option<&Avatar> {
        self.avatar.as_ref()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UserCommand {
    Register {
        user_id: UserId,
        role: Role,
        first_name: String,
        last_name: String,
        email: String,
        /// A PHC string (`$argon2id$...`), hashed by the caller: the domain never sees a
        /// password.
        password_hash: String,
        preferred_language: Language,
        /// Students only; a student without one starts as a beginner.
        hebrew_level: Option<HebrewLevel>,
        /// Students only.
        interests: Vec<String>,
        registered_by: Actor,
    },
    UpdateProfile {
        first_name: Option<String>,
        last_name: Option<String>,
        actor: Actor,
    },
    ChangePreferredLanguage {
        language: Language,
    },
    ChangeHebrewLevel {
        level: HebrewLevel,
    },
    ReplaceInterests {
        interests: Vec<String>,
    },
    ChangeRole {
        role: Role,
        actor: Actor,
    },
    SetAvatar {
        blob_path: String,
        content_type: String,
    },
    ClearAvatar,
    ChangePassword {
        password_hash: String,
    },
    /// Forgets the person (GDPR erasure): their key is shredded and the account closed.
    Erase {
        actor: Actor,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        role: Role,
        first_name: Sealed,
        last_name: Sealed,
        email: Sealed,
        password_hash: Sealed,
        preferred_language: Language,
        hebrew_level: Option<HebrewLevel>,
        /// The JSON array of interests (`[]` for non-students).
        interests: Sealed,
    },
    ProfileUpdated {
        first_name: Option<Sealed>,
        last_name: Option<Sealed>,
    },
    PreferredLanguageChanged {
        language: Language,
    },
    HebrewLevelChanged {
        level: HebrewLevel,
    },
    /// The JSON array of interests.
    InterestsReplaced {
        interests: Sealed,
    },
    /// Leaving the student role drops the Hebrew level and interests, which only students
    /// have; a new student's level is recorded by a `HebrewLevelChanged` that follows.
    RoleChanged {
        from: Role,
        to: Role,
    },
    AvatarSet {
        blob_path: String,
        content_type: String,
    },
    AvatarCleared,
    PasswordChanged {
        password_hash: Sealed,
    },
    UserErased,
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::ProfileUpdated { .. } => "ProfileUpdated",
            UserEvent::PreferredLanguageChanged { .. } => "PreferredLanguageChanged",
            UserEvent::HebrewLevelChanged { .. } => "HebrewLevelChanged",
            UserEvent::InterestsReplaced { .. } => "InterestsReplaced",
            UserEvent::RoleChanged { .. } => "RoleChanged",
            UserEvent::AvatarSet { .. } => "AvatarSet",
            UserEvent::AvatarCleared => "AvatarCleared",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
            UserEvent::UserErased => "UserErased",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("{reason}")]
    InvalidInput { field: &'static str, reason: String },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("this user does not exist")]
    NotFound,
    #[error("this user is already registered")]
    AlreadyRegistered,
    #[error("this email address is already registered")]
    EmailTaken,
    #[error("this user was erased; the account can no longer be used or changed")]
    Erased,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for UserError {
    fn kind(&self) -> ErrorKind {
        match self {
            UserError::InvalidInput { .. } => ErrorKind::InvalidInput,
            UserError::Forbidden(_) => ErrorKind::Forbidden,
            UserError::NotFound => ErrorKind::NotFound,
            UserError::AlreadyRegistered | UserError::EmailTaken | UserError::Erased => {
                ErrorKind::Conflict
            }
            UserError::Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            UserError::InvalidInput { field, .. } => Some(field),
            _ => None,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> UserError {
    UserError::InvalidInput {
        field,
        reason: reason.into(),
    }
}

/// A first or last name: trimmed, present, not absurdly long.
fn valid_name(raw: &str, field: &'static str, label: &str) -> Result<String, UserError> {
    let name = text::bounded(raw, NAME_MAX_CHARS).map_err(|p| {
        invalid(
            field,
            p.reason(&format!("a {label} is required"), &format!("a {label}")),
        )
    })?;
    Ok(name.to_string())
}

/// A student's interests, trimmed, each listed once (the first spelling wins).
fn valid_interests(raw: Vec<String>) -> Result<Vec<String>, UserError> {
    let mut seen = HashSet::new();
    let mut interests = Vec::new();
    for interest in &raw {
        let interest = text::bounded(interest, INTEREST_MAX_CHARS).map_err(|p| {
            invalid(
                "interests",
                p.reason("an interest cannot be empty", "an interest"),
            )
        })?;
        if seen.insert(interest.to_lowercase()) {
            interests.push(interest.to_string());
        }
    }
    if interests.len() > INTERESTS_MAX {
        return Err(invalid(
            "interests",
            format!("at most {INTERESTS_MAX} interests can be listed"),
        ));
    }
    Ok(interests)
}

fn interests_json(interests: &[String]) -> String {
    serde_json::to_string(interests).expect("a list of strings always serializes")
}

/// The caller hashes passwords; this only guards against storing something that is not a
/// PHC string (`$algorithm$...`), which would lock the person out for good.
fn valid_password_hash(raw: String) -> Result<String, UserError> {
    let looks_like_phc = raw.len() > 1
        && raw.len() <= PASSWORD_HASH_MAX_LEN
        && raw.starts_with('$')
        && !raw.chars().any(char::is_whitespace);
    if looks_like_phc {
        Ok(raw)
    } else {
        Err(invalid("password", "the password could not be stored"))
    }
}

/// Everything a `Register` command carries.
struct Registration {
    user_id: UserId,
    role: Role,
    first_name: String,
    last_name: String,
    email: String,
    password_hash: String,
    preferred_language: Language,
    hebrew_level: Option<HebrewLevel>,
    interests: Vec<String>,
    registered_by: Actor,
}

impl User {
    /// Every command but `Register` needs a live account.
    fn ensure_active(&self) -> Result<(), UserError> {
        if self.erased {
            Err(UserError::Erased)
        } else if !self.registered {
            Err(UserError::NotFound)
        } else {
            Ok(())
        }
    }

    fn ensure_self_or_admin(&self, actor: Actor, refusal: &'static str) -> Result<(), UserError> {
        if actor.is_admin() || actor.user_id() == Some(self.id) {
            Ok(())
        } else {
            Err(UserError::Forbidden(refusal))
        }
    }

    fn ensure_student(&self, field: &'static str, what: &str) -> Result<(), UserError> {
        if self.role == Role::Student {
            Ok(())
        } else {
            Err(invalid(field, format!("only students have {what}")))
        }
    }

    async fn register(
        &mut self,
        registration: Registration,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        let Registration {
            user_id,
            role,
            first_name,
            last_name,
            email,
            password_hash,
            preferred_language,
            hebrew_level,
            interests,
            registered_by,
        } = registration;
        if self.erased {
            return Err(UserError::Erased);
        }
        if self.registered {
            return Err(UserError::AlreadyRegistered);
        }
        match registered_by {
            Actor::Anonymous if role == Role::Student => {}
            Actor::Anonymous => {
                return Err(UserError::Forbidden(
                    "signing up creates a student account; only an admin can create a teacher or an admin",
                ))
            }
            actor if actor.is_admin() => {}
            _ => {
                return Err(UserError::Forbidden(
                    "only an admin can register an account for someone else",
                ))
            }
        }

        let first_name = valid_name(&first_name, "firstName", "first name")?;
        let last_name = valid_name(&last_name, "lastName", "last name")?;
        let email = EmailAddress::parse(&email)?;
        let password_hash = valid_password_hash(password_hash)?;
        let (hebrew_level, interests) = if role == Role::Student {
            (
                Some(hebrew_level.unwrap_or_default()),
                valid_interests(interests)?,
            )
        } else {
            if hebrew_level.is_some() {
                return Err(invalid("hebrewLevel", "only students have a Hebrew level"));
            }
            if !interests.is_empty() {
                return Err(invalid("interests", "only students have interests"));
            }
            (None, Vec::new())
        };

        // Seal first: it has no effect anyone else can see, so a failure here leaves no
        // claim behind.
        let vault = &services.vault;
        let event = UserEvent::UserRegistered {
            role,
            first_name: vault.seal(user_id, &first_name).await?,
            last_name: vault.seal(user_id, &last_name).await?,
            email: vault.seal(user_id, email.as_str()).await?,
            password_hash: vault.seal(user_id, &password_hash).await?,
            preferred_language,
            hebrew_level,
            interests: vault.seal(user_id, &interests_json(&interests)).await?,
        };
        let claim = services
            .claims
            .claim(ClaimScope::UserEmail, email.as_str(), &user_id.to_string())
            .await?;
        if let ClaimOutcome::TakenBy(_) = claim {
            return Err(UserError::EmailTaken);
        }
        sink.write(event, self).await;
        Ok(())
    }

    async fn update_profile(
        &mut self,
        first_name: Option<String>,
        last_name: Option<String>,
        actor: Actor,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        self.ensure_self_or_admin(
            actor,
            "only the user themself or an admin can change a profile",
        )?;
        let first_name = first_name
            .map(|name| valid_name(&name, "firstName", "first name"))
            .transpose()?;
        let last_name = last_name
            .map(|name| valid_name(&name, "lastName", "last name"))
            .transpose()?;
        if first_name.is_none() && last_name.is_none() {
            return Ok(());
        }
        let first_name = match first_name {
            Some(name) => Some(services.vault.seal(self.id, &name).await?),
            None => None,
        };
        let last_name = match last_name {
            Some(name) => Some(services.vault.seal(self.id, &name).await?),
            None => None,
        };
        let event = UserEvent::ProfileUpdated {
            first_name,
            last_name,
        };
        sink.write(event, self).await;
        Ok(())
    }

    async fn change_role(
        &mut self,
        role: Role,
        actor: Actor,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        if !actor.is_admin() {
            return Err(UserError::Forbidden("only an admin can change a role"));
        }
        if role == self.role {
            return Ok(());
        }
        let from = self.role;
        sink.write(UserEvent::RoleChanged { from, to: role }, self)
            .await;
        if role == Role::Student {
            // A new student starts as a beginner, as one who signed up would.
            let event = UserEvent::HebrewLevelChanged {
                level: HebrewLevel::default(),
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    async fn set_avatar(
        &mut self,
        blob_path: String,
        content_type: String,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        let prefix = format!("{}/", self.id);
        let blob_path = blob_path.trim().to_string();
        let file = blob_path.strip_prefix(&prefix).unwrap_or_default();
        let path_ok = !file.is_empty()
            && blob_path.chars().count() <= AVATAR_PATH_MAX_CHARS
            && !blob_path.split('/').any(|segment| segment == "..")
            && !blob_path.contains('\\');
        if !path_ok {
            return Err(invalid(
                "blobPath",
                "the avatar must be uploaded to this user's own folder",
            ));
        }
        let content_type = content_type.trim().to_ascii_lowercase();
        if !AVATAR_CONTENT_TYPES.contains(&content_type.as_str()) {
            return Err(invalid(
                "contentType",
                "an avatar must be a JPEG, PNG or WebP image",
            ));
        }
        let avatar = Avatar {
            blob_path,
            content_type,
        };
        if self.avatar.as_ref() == Some(&avatar) {
            return Ok(());
        }
        let event = UserEvent::AvatarSet {
            blob_path: avatar.blob_path,
            content_type: avatar.content_type,
        };
        sink.write(event, self).await;
        Ok(())
    }

    async fn erase(
        &mut self,
        actor: Actor,
        services: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        self.ensure_self_or_admin(
            actor,
            "only the user themself or an admin can erase an account",
        )?;
        // The claim holds the email in plaintext, so it must go too. It is released by its
        // owner rather than by its value: the value would have to be opened with the key,
        // and a retried erasure may find the key already shredded. Released before the
        // shred, so a failure here leaves the account intact and the command retryable.
        services
            .claims
            .release_owned(ClaimScope::UserEmail, &self.id.to_string())
            .await?;
        services.vault.shred(self.id).await?;
        sink.write(UserEvent::UserErased, self).await;
        Ok(())
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        if !matches!(command, UserCommand::Register { .. }) {
            self.ensure_active()?;
        }
        match command {
            UserCommand::Register {
                user_id,
                role,
                first_name,
                last_name,
                email,
                password_hash,
                preferred_language,
                hebrew_level,
                interests,
                registered_by,
            } => {
                let registration = Registration {
                    user_id,
                    role,
                    first_name,
                    last_name,
                    email,
                    password_hash,
                    preferred_language,
                    hebrew_level,
                    interests,
                    registered_by,
                };
                self.register(registration, services, sink).await?;
            }
            UserCommand::UpdateProfile {
                first_name,
                last_name,
                actor,
            } => {
                self.update_profile(first_name, last_name, actor, services, sink)
                    .await?;
            }
            UserCommand::ChangePreferredLanguage { language } => {
                if language != self.preferred_language {
                    sink.write(UserEvent::PreferredLanguageChanged { language }, self)
                        .await;
                }
            }
            UserCommand::ChangeHebrewLevel { level } => {
                self.ensure_student("hebrewLevel", "a Hebrew level")?;
                if Some(level) != self.hebrew_level {
                    sink.write(UserEvent::HebrewLevelChanged { level }, self)
                        .await;
                }
            }
            UserCommand::ReplaceInterests { interests } => {
                self.ensure_student("interests", "interests")?;
                let interests = valid_interests(interests)?;
                let sealed = services
                    .vault
                    .seal(self.id, &interests_json(&interests))
                    .await?;
                sink.write(UserEvent::InterestsReplaced { interests: sealed }, self)
                    .await;
            }
            UserCommand::ChangeRole { role, actor } => {
                self.change_role(role, actor, sink).await?;
            }
            UserCommand::SetAvatar {
                blob_path,
                content_type,
            } => {
                self.set_avatar(blob_path, content_type, sink).await?;
            }
            UserCommand::ClearAvatar => {
                if self.avatar.is_some() {
                    sink.write(UserEvent::AvatarCleared, self).await;
                }
            }
            UserCommand::ChangePassword { password_hash } => {
                let password_hash = valid_password_hash(password_hash)?;
                let sealed = services.vault.seal(self.id, &password_hash).await?;
                let event = UserEvent::PasswordChanged {
                    password_hash: sealed,
                };
                sink.write(event, self).await;
            }
            UserCommand::Erase { actor } => {
                self.erase(actor, services, sink).await?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            UserEvent::UserRegistered {
                role,
                email,
                preferred_language,
                hebrew_level,
                interests,
                password_hash,
                ..
            } => {
                // Sealed data names its subject, and the subject of an account is its user.
                self.id = email.subject;
                self.password_hash = Some(password_hash);
                self.registered = true;
                self.role = role;
                self.email = Some(email);
                self.preferred_language = preferred_language;
                self.hebrew_level = hebrew_level;
                self.interests = Some(interests);
            }
            // Names decide nothing here; the read side keeps them.
            UserEvent::ProfileUpdated { .. } => {}
            UserEvent::PasswordChanged { password_hash } => {
                self.password_hash = Some(password_hash);
            }
            UserEvent::PreferredLanguageChanged { language } => {
                self.preferred_language = language;
            }
            UserEvent::HebrewLevelChanged { level } => {
                self.hebrew_level = Some(level);
            }
            UserEvent::InterestsReplaced { interests } => {
                self.interests = Some(interests);
            }
            UserEvent::RoleChanged { to, .. } => {
                if to != Role::Student {
                    self.hebrew_level = None;
                    self.interests = None;
                }
                self.role = to;
            }
            UserEvent::AvatarSet {
                blob_path,
                content_type,
            } => {
                self.avatar = Some(Avatar {
                    blob_path,
                    content_type,
                });
            }
            UserEvent::AvatarCleared => {
                self.avatar = None;
            }
            UserEvent::UserErased => {
                self.erased = true;
                self.email = None;
                self.hebrew_level = None;
                self.interests = None;
                self.avatar = None;
                self.password_hash = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{sealed, TestWorld};
    use cqrs_es::test::{AggregateResultValidator, TestFramework};

    const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";

    fn when(
        world: &TestWorld,
        given: Vec<UserEvent>,
        command: UserCommand,
    ) -> AggregateResultValidator<User> {
        TestFramework::<User>::with(world.services())
            .given(given)
            .when(command)
    }

    /// A sign-up form as a test fills it in; `command()` turns it into `Register`.
    struct Signup {
        id: UserId,
        role: Role,
        first_name: String,
        last_name: String,
        email: String,
        password_hash: String,
        hebrew_level: Option<HebrewLevel>,
        interests: Vec<String>,
        by: Actor,
    }

    fn signup(id: UserId, role: Role, by: Actor) -> Signup {
        Signup {
            id,
            role,
            first_name: " Dana ".into(),
            last_name: "Levi".into(),
            email: "  Dana.Levi@Example.COM ".into(),
            password_hash: HASH.into(),
            hebrew_level: None,
            interests: vec![],
            by,
        }
    }

    impl Signup {
        fn command(self) -> UserCommand {
            UserCommand::Register {
                user_id: self.id,
                role: self.role,
                first_name: self.first_name,
                last_name: self.last_name,
                email: self.email,
                password_hash: self.password_hash,
                preferred_language: Language::He,
                hebrew_level: self.hebrew_level,
                interests: self.interests,
                registered_by: self.by,
            }
        }
    }

    fn register(id: UserId, role: Role, registered_by: Actor) -> UserCommand {
        signup(id, role, registered_by).command()
    }

    /// What registering `signup(id, role, ..)` records.
    fn registered(id: UserId, role: Role) -> UserEvent {
        let level = (role == Role::Student).then_some(HebrewLevel::Beginner);
        registered_with(id, role, level, "[]")
    }

    fn registered_with(
        id: UserId,
        role: Role,
        hebrew_level: Option<HebrewLevel>,
        interests_json: &str,
    ) -> UserEvent {
        UserEvent::UserRegistered {
            role,
            first_name: sealed(id, "Dana"),
            last_name: sealed(id, "Levi"),
            email: sealed(id, "dana.levi@example.com"),
            password_hash: sealed(id, HASH),
            preferred_language: Language::He,
            hebrew_level,
            interests: sealed(id, interests_json),
        }
    }

    fn email_holder(world: &TestWorld, email: &str) -> Option<String> {
        world.claim_holder(ClaimScope::UserEmail, email)
    }

    fn hold_email(world: &TestWorld, email: &str, owner: &str) {
        world.hold_claim(ClaimScope::UserEmail, email, owner);
    }

    fn error_of(validator: AggregateResultValidator<User>) -> UserError {
        validator.inspect_result().unwrap_err()
    }

    fn assert_invalid(validator: AggregateResultValidator<User>, field: &str) {
        let err = error_of(validator);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert_eq!(err.field(), Some(field), "{err}");
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    // --- value objects ---

    #[test]
    fn language_follows_the_preferred_accept_language_tag() {
        assert_eq!(Language::parse("he"), Language::He);
        assert_eq!(Language::parse(" HE-il,en;q=0.8"), Language::He);
        assert_eq!(Language::parse("iw"), Language::He);
        assert_eq!(Language::parse("he_IL"), Language::He);
        assert_eq!(Language::parse("en-US,he;q=0.9"), Language::En);
        assert_eq!(Language::parse("fr"), Language::En);
        assert_eq!(Language::parse(""), Language::En);
        assert_eq!(Language::parse("hebrew"), Language::En);
        assert_eq!(Language::He.code(), "he");
        assert_eq!(Language::default().to_string(), "en");
    }

    #[test]
    fn hebrew_levels_parse_in_any_case_and_list_the_options_otherwise() {
        assert_eq!("Beginner".parse(), Ok(HebrewLevel::Beginner));
        assert_eq!("INTERMEDIATE".parse(), Ok(HebrewLevel::Intermediate));
        assert_eq!(" advanced ".parse(), Ok(HebrewLevel::Advanced));
        assert_eq!("fluent".parse(), Ok(HebrewLevel::Fluent));
        let err = "native".parse::<HebrewLevel>().unwrap_err();
        assert!(
            err.contains("beginner, intermediate, advanced or fluent"),
            "{err}"
        );
        assert_eq!(HebrewLevel::Fluent.to_string(), "fluent");
    }

    #[test]
    fn email_addresses_are_trimmed_and_lower_cased() {
        let email = EmailAddress::parse("  Dana.Levi@Example.COM\n").unwrap();
        assert_eq!(email.as_str(), "dana.levi@example.com");
        assert_eq!(email.to_string(), "dana.levi@example.com");
    }

    #[test]
    fn malformed_email_addresses_are_refused() {
        let too_long = format!("{}@example.com", "a".repeat(EMAIL_MAX_CHARS));
        for bad in [
            "",
            "   ",
            "dana",
            "dana@",
            "@example.com",
            "dana@example",
            "dana@@example.com",
            "dana@exa@mple.com",
            "da na@example.com",
            "dana@.com",
            "dana@example.",
            &too_long,
        ] {
            let err = EmailAddress::parse(bad).unwrap_err();
            assert_eq!(err.field(), Some("email"), "{bad:?}");
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
        let longest = format!("{}@example.com", "a".repeat(EMAIL_MAX_CHARS - 12));
        assert!(EmailAddress::parse(&longest).is_ok());
    }

    // --- register ---

    #[test]
    fn self_sign_up_registers_a_beginner_student_with_everything_sealed() {
        let world = TestWorld::default();
        let id = UserId::new();
        when(
            &world,
            vec![],
            register(id, Role::Student, Actor::Anonymous),
        )
        .then_expect_events(vec![registered(id, Role::Student)]);
        assert_eq!(
            email_holder(&world, "dana.levi@example.com"),
            Some(id.to_string())
        );
    }

    #[test]
    fn a_student_registers_with_a_level_and_tidied_interests() {
        let world = TestWorld::default();
        let id = UserId::new();
        let command = Signup {
            hebrew_level: Some(HebrewLevel::Advanced),
            interests: vec![
                " Music ".into(),
                "cooking".into(),
                "music".into(),
                "MUSIC".into(),
            ],
            ..signup(id, Role::Student, Actor::Anonymous)
        }
        .command();
        let expected = registered_with(
            id,
            Role::Student,
            Some(HebrewLevel::Advanced),
            r#"["Music","cooking"]"#,
        );
        when(&world, vec![], command).then_expect_events(vec![expected]);
    }

    #[test]
    fn nothing_personal_is_stored_in_plaintext() {
        let world = TestWorld::default();
        let id = UserId::new();
        let events = when(
            &world,
            vec![],
            register(id, Role::Student, Actor::Anonymous),
        )
        .inspect_result()
        .unwrap();
        let json = serde_json::to_string(&events).unwrap();
        for secret in ["Dana", "Levi", "example.com", "argon2id"] {
            assert!(!json.contains(secret), "{secret} leaked into {json}");
        }
    }

    #[test]
    fn self_sign_up_cannot_create_a_teacher_or_an_admin() {
        let world = TestWorld::default();
        for role in [Role::Teacher, Role::Admin] {
            let err = error_of(when(
                &world,
                vec![],
                register(UserId::new(), role, Actor::Anonymous),
            ));
            assert_eq!(err.kind(), ErrorKind::Forbidden);
        }
        assert_eq!(email_holder(&world, "dana.levi@example.com"), None);
    }

    #[test]
    fn an_admin_or_the_system_registers_any_role() {
        let admin = Actor::user(UserId::new(), Role::Admin);
        for (role, actor) in [
            (Role::Teacher, admin),
            (Role::Admin, admin),
            (Role::Student, admin),
            (Role::Admin, Actor::System),
        ] {
            let id = UserId::new();
            when(&TestWorld::default(), vec![], register(id, role, actor))
                .then_expect_events(vec![registered(id, role)]);
        }
    }

    #[test]
    fn teachers_and_students_cannot_register_others() {
        for role in [Role::Teacher, Role::Student] {
            let actor = Actor::user(UserId::new(), role);
            let err = error_of(when(
                &TestWorld::default(),
                vec![],
                register(UserId::new(), Role::Student, actor),
            ));
            assert_eq!(err.kind(), ErrorKind::Forbidden);
        }
    }

    #[test]
    fn an_account_is_registered_once() {
        let id = UserId::new();
        when(
            &TestWorld::default(),
            vec![registered(id, Role::Student)],
            register(id, Role::Student, Actor::Anonymous),
        )
        .then_expect_error(UserError::AlreadyRegistered);
        assert_eq!(UserError::AlreadyRegistered.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn an_erased_account_cannot_be_registered_again() {
        let id = UserId::new();
        when(
            &TestWorld::default(),
            vec![registered(id, Role::Student), UserEvent::UserErased],
            register(id, Role::Student, Actor::Anonymous),
        )
        .then_expect_error(UserError::Erased);
    }

    #[test]
    fn an_email_belongs_to_one_account() {
        let world = TestWorld::default();
        hold_email(&world, "dana.levi@example.com", &UserId::new().to_string());
        let err = error_of(when(
            &world,
            vec![],
            register(UserId::new(), Role::Student, Actor::Anonymous),
        ));
        assert_eq!(err, UserError::EmailTaken);
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(err.to_string().contains("already registered"));
    }

    #[test]
    fn a_retried_registration_keeps_its_own_email_claim() {
        let world = TestWorld::default();
        let id = UserId::new();
        hold_email(&world, "dana.levi@example.com", &id.to_string());
        when(
            &world,
            vec![],
            register(id, Role::Student, Actor::Anonymous),
        )
        .then_expect_events(vec![registered(id, Role::Student)]);
    }

    #[test]
    fn names_are_required_and_bounded() {
        let world = TestWorld::default();
        let long = "ש".repeat(NAME_MAX_CHARS + 1);
        for (first, last, field) in [
            ("", "Levi", "firstName"),
            ("  ", "Levi", "firstName"),
            (long.as_str(), "Levi", "firstName"),
            ("Dana", "", "lastName"),
            ("Dana", long.as_str(), "lastName"),
        ] {
            let command = Signup {
                first_name: first.into(),
                last_name: last.into(),
                ..signup(UserId::new(), Role::Student, Actor::Anonymous)
            }
            .command();
            assert_invalid(when(&world, vec![], command), field);
        }
    }

    #[test]
    fn a_malformed_email_or_password_hash_is_refused() {
        let world = TestWorld::default();
        let command = Signup {
            email: "dana at example.com".into(),
            ..signup(UserId::new(), Role::Student, Actor::Anonymous)
        }
        .command();
        assert_invalid(when(&world, vec![], command), "email");
        for hash in ["", "$", "hunter22", "$argon2id$ with spaces"] {
            let command = Signup {
                password_hash: hash.into(),
                ..signup(UserId::new(), Role::Student, Actor::Anonymous)
            }
            .command();
            assert_invalid(when(&world, vec![], command), "password");
        }
    }

    #[test]
    fn only_students_have_a_hebrew_level_or_interests() {
        let world = TestWorld::default();
        let command = Signup {
            hebrew_level: Some(HebrewLevel::Fluent),
            ..signup(UserId::new(), Role::Teacher, Actor::System)
        }
        .command();
        assert_invalid(when(&world, vec![], command), "hebrewLevel");
        let command = Signup {
            interests: vec!["music".into()],
            ..signup(UserId::new(), Role::Admin, Actor::System)
        }
        .command();
        assert_invalid(when(&world, vec![], command), "interests");
    }

    #[test]
    fn interests_are_bounded() {
        let too_many: Vec<String> = (0..=INTERESTS_MAX).map(|i| format!("topic {i}")).collect();
        let many_duplicates: Vec<String> = (0..=INTERESTS_MAX).map(|_| "music".into()).collect();
        for (interests, ok) in [
            (vec!["".to_string()], false),
            (vec!["  ".to_string()], false),
            (vec!["x".repeat(INTEREST_MAX_CHARS + 1)], false),
            (too_many, false),
            (vec!["x".repeat(INTEREST_MAX_CHARS)], true),
            (many_duplicates, true),
        ] {
            let command = Signup {
                interests,
                ..signup(UserId::new(), Role::Student, Actor::Anonymous)
            }
            .command();
            // A fresh world each time: every sign-up uses the same email.
            let result = when(&TestWorld::default(), vec![], command).inspect_result();
            match ok {
                true => assert!(result.is_ok()),
                false => assert_eq!(result.unwrap_err().field(), Some("interests")),
            }
        }
    }

    // --- commands on an account ---

    #[test]
    fn every_command_needs_a_registered_account() {
        let world = TestWorld::default();
        let id = UserId::new();
        for command in commands_on(id) {
            let err = error_of(when(&world, vec![], command));
            assert_eq!(err, UserError::NotFound);
            assert_eq!(err.kind(), ErrorKind::NotFound);
        }
    }

    #[test]
    fn an_erased_account_refuses_every_command() {
        let world = TestWorld::default();
        let id = UserId::new();
        for command in commands_on(id) {
            let err = error_of(when(
                &world,
                vec![registered(id, Role::Student), UserEvent::UserErased],
                command,
            ));
            assert_eq!(err, UserError::Erased);
            assert_eq!(err.kind(), ErrorKind::Conflict);
            assert!(err.to_string().contains("erased"));
        }
    }

    /// One valid command of every kind but `Register`, as the user themself or an admin.
    fn commands_on(id: UserId) -> Vec<UserCommand> {
        vec![
            UserCommand::UpdateProfile {
                first_name: Some("Noa".into()),
                last_name: None,
                actor: Actor::user(id, Role::Student),
            },
            UserCommand::ChangePreferredLanguage {
                language: Language::En,
            },
            UserCommand::ChangeHebrewLevel {
                level: HebrewLevel::Fluent,
            },
            UserCommand::ReplaceInterests {
                interests: vec!["music".into()],
            },
            UserCommand::ChangeRole {
                role: Role::Teacher,
                actor: Actor::System,
            },
            UserCommand::SetAvatar {
                blob_path: format!("{id}/avatar_v1.png"),
                content_type: "image/png".into(),
            },
            UserCommand::ClearAvatar,
            UserCommand::ChangePassword {
                password_hash: HASH.into(),
            },
            UserCommand::Erase {
                actor: Actor::user(id, Role::Student),
            },
        ]
    }

    #[test]
    fn a_user_updates_their_own_names() {
        let id = UserId::new();
        let world = TestWorld::default();
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::UpdateProfile {
                first_name: Some(" Noa ".into()),
                last_name: Some("Cohen".into()),
                actor: Actor::user(id, Role::Student),
            },
        )
        .then_expect_events(vec![UserEvent::ProfileUpdated {
            first_name: Some(sealed(id, "Noa")),
            last_name: Some(sealed(id, "Cohen")),
        }]);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::UpdateProfile {
                first_name: None,
                last_name: Some("Cohen".into()),
                actor: Actor::System,
            },
        )
        .then_expect_events(vec![UserEvent::ProfileUpdated {
            first_name: None,
            last_name: Some(sealed(id, "Cohen")),
        }]);
    }

    #[test]
    fn an_empty_profile_update_records_nothing() {
        let id = UserId::new();
        when(
            &TestWorld::default(),
            vec![registered(id, Role::Student)],
            UserCommand::UpdateProfile {
                first_name: None,
                last_name: None,
                actor: Actor::user(id, Role::Student),
            },
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn only_the_user_or_an_admin_updates_a_profile() {
        let id = UserId::new();
        let world = TestWorld::default();
        for actor in [
            Actor::user(UserId::new(), Role::Teacher),
            Actor::user(UserId::new(), Role::Student),
            Actor::Anonymous,
        ] {
            let err = error_of(when(
                &world,
                vec![registered(id, Role::Student)],
                UserCommand::UpdateProfile {
                    first_name: Some("Noa".into()),
                    last_name: None,
                    actor,
                },
            ));
            assert_eq!(err.kind(), ErrorKind::Forbidden);
        }
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::UpdateProfile {
                first_name: Some("Noa".into()),
                last_name: None,
                actor: Actor::user(UserId::new(), Role::Admin),
            },
        )
        .then_expect_events(vec![UserEvent::ProfileUpdated {
            first_name: Some(sealed(id, "Noa")),
            last_name: None,
        }]);
    }

    #[test]
    fn updated_names_are_validated() {
        let id = UserId::new();
        let world = TestWorld::default();
        for (first, last, field) in [
            (Some(" "), None, "firstName"),
            (None, Some(""), "lastName"),
            (
                Some("Noa"),
                Some(&*"x".repeat(NAME_MAX_CHARS + 1)),
                "lastName",
            ),
        ] {
            let command = UserCommand::UpdateProfile {
                first_name: first.map(String::from),
                last_name: last.map(String::from),
                actor: Actor::user(id, Role::Student),
            };
            assert_invalid(
                when(&world, vec![registered(id, Role::Student)], command),
                field,
            );
        }
    }

    #[test]
    fn changing_the_preferred_language_is_recorded_once() {
        let id = UserId::new();
        let world = TestWorld::default();
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ChangePreferredLanguage {
                language: Language::En,
            },
        )
        .then_expect_events(vec![UserEvent::PreferredLanguageChanged {
            language: Language::En,
        }]);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ChangePreferredLanguage {
                language: Language::He,
            },
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn a_student_changes_their_hebrew_level() {
        let id = UserId::new();
        let world = TestWorld::default();
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ChangeHebrewLevel {
                level: HebrewLevel::Intermediate,
            },
        )
        .then_expect_events(vec![UserEvent::HebrewLevelChanged {
            level: HebrewLevel::Intermediate,
        }]);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ChangeHebrewLevel {
                level: HebrewLevel::Beginner,
            },
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn a_teacher_has_no_hebrew_level_or_interests() {
        let id = UserId::new();
        let world = TestWorld::default();
        assert_invalid(
            when(
                &world,
                vec![registered(id, Role::Teacher)],
                UserCommand::ChangeHebrewLevel {
                    level: HebrewLevel::Fluent,
                },
            ),
            "hebrewLevel",
        );
        assert_invalid(
            when(
                &world,
                vec![registered(id, Role::Teacher)],
                UserCommand::ReplaceInterests {
                    interests: vec!["music".into()],
                },
            ),
            "interests",
        );
    }

    #[test]
    fn a_student_replaces_their_interests() {
        let id = UserId::new();
        let world = TestWorld::default();
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ReplaceInterests {
                interests: vec!["Travel".into(), " travel ".into(), "חדשות".into()],
            },
        )
        .then_expect_events(vec![UserEvent::InterestsReplaced {
            interests: sealed(id, r#"["Travel","חדשות"]"#),
        }]);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ReplaceInterests { interests: vec![] },
        )
        .then_expect_events(vec![UserEvent::InterestsReplaced {
            interests: sealed(id, "[]"),
        }]);
        assert_invalid(
            when(
                &world,
                vec![registered(id, Role::Student)],
                UserCommand::ReplaceInterests {
                    interests: vec!["".into()],
                },
            ),
            "interests",
        );
    }

    #[test]
    fn an_admin_turns_a_student_into_a_teacher() {
        let id = UserId::new();
        let world = TestWorld::default();
        let admin = Actor::user(UserId::new(), Role::Admin);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ChangeRole {
                role: Role::Teacher,
                actor: admin,
            },
        )
        .then_expect_events(vec![UserEvent::RoleChanged {
            from: Role::Student,
            to: Role::Teacher,
        }]);

        // The level went with the student role.
        let mut user = User::default();
        user.apply(registered(id, Role::Student));
        user.apply(UserEvent::RoleChanged {
            from: Role::Student,
            to: Role::Teacher,
        });
        assert_eq!(user.role(), Role::Teacher);
        assert_eq!(user.hebrew_level(), None);
        assert_eq!(user.interests, None);
        assert_invalid(
            when(
                &world,
                vec![
                    registered(id, Role::Student),
                    UserEvent::RoleChanged {
                        from: Role::Student,
                        to: Role::Teacher,
                    },
                ],
                UserCommand::ChangeHebrewLevel {
                    level: HebrewLevel::Advanced,
                },
            ),
            "hebrewLevel",
        );
    }

    #[test]
    fn a_new_student_starts_as_a_beginner() {
        let id = UserId::new();
        when(
            &TestWorld::default(),
            vec![registered(id, Role::Teacher)],
            UserCommand::ChangeRole {
                role: Role::Student,
                actor: Actor::System,
            },
        )
        .then_expect_events(vec![
            UserEvent::RoleChanged {
                from: Role::Teacher,
                to: Role::Student,
            },
            UserEvent::HebrewLevelChanged {
                level: HebrewLevel::Beginner,
            },
        ]);
    }

    #[test]
    fn only_an_admin_changes_a_role() {
        let id = UserId::new();
        let world = TestWorld::default();
        for actor in [
            Actor::user(id, Role::Student),
            Actor::user(UserId::new(), Role::Teacher),
            Actor::Anonymous,
        ] {
            let err = error_of(when(
                &world,
                vec![registered(id, Role::Student)],
                UserCommand::ChangeRole {
                    role: Role::Admin,
                    actor,
                },
            ));
            assert_eq!(err.kind(), ErrorKind::Forbidden);
        }
    }

    #[test]
    fn changing_to_the_same_role_records_nothing() {
        let id = UserId::new();
        when(
            &TestWorld::default(),
            vec![registered(id, Role::Teacher)],
            UserCommand::ChangeRole {
                role: Role::Teacher,
                actor: Actor::System,
            },
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn an_avatar_is_set_from_the_users_own_folder() {
        let id = UserId::new();
        let world = TestWorld::default();
        let path = format!("{id}/avatar_v638.webp");
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::SetAvatar {
                blob_path: path.clone(),
                content_type: " Image/WebP ".into(),
            },
        )
        .then_expect_events(vec![UserEvent::AvatarSet {
            blob_path: path.clone(),
            content_type: "image/webp".into(),
        }]);
        // Confirming the same upload twice records it once.
        when(
            &world,
            vec![
                registered(id, Role::Student),
                UserEvent::AvatarSet {
                    blob_path: path.clone(),
                    content_type: "image/webp".into(),
                },
            ],
            UserCommand::SetAvatar {
                blob_path: path,
                content_type: "image/webp".into(),
            },
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn an_avatar_elsewhere_or_of_another_type_is_refused() {
        let id = UserId::new();
        let world = TestWorld::default();
        for (path, content_type, field) in [
            (format!("{}/a.png", UserId::new()), "image/png", "blobPath"),
            (format!("{id}/"), "image/png", "blobPath"),
            (format!("{id}"), "image/png", "blobPath"),
            (format!("{id}/../other/a.png"), "image/png", "blobPath"),
            (format!("x/{id}/a.png"), "image/png", "blobPath"),
            (
                format!("{id}/{}", "a".repeat(AVATAR_PATH_MAX_CHARS)),
                "image/png",
                "blobPath",
            ),
            (format!("{id}/a.gif"), "image/gif", "contentType"),
            (format!("{id}/a.svg"), "image/svg+xml", "contentType"),
        ] {
            assert_invalid(
                when(
                    &world,
                    vec![registered(id, Role::Student)],
                    UserCommand::SetAvatar {
                        blob_path: path,
                        content_type: content_type.into(),
                    },
                ),
                field,
            );
        }
    }

    #[test]
    fn clearing_an_avatar_is_recorded_only_when_there_is_one() {
        let id = UserId::new();
        let world = TestWorld::default();
        let with_avatar = vec![
            registered(id, Role::Student),
            UserEvent::AvatarSet {
                blob_path: format!("{id}/a.png"),
                content_type: "image/png".into(),
            },
        ];
        when(&world, with_avatar.clone(), UserCommand::ClearAvatar)
            .then_expect_events(vec![UserEvent::AvatarCleared]);
        let mut cleared = with_avatar;
        cleared.push(UserEvent::AvatarCleared);
        when(&world, cleared, UserCommand::ClearAvatar).then_expect_events(vec![]);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ClearAvatar,
        )
        .then_expect_events(vec![]);
    }

    #[test]
    fn a_changed_password_hash_is_sealed() {
        let id = UserId::new();
        let world = TestWorld::default();
        let new_hash = "$argon2id$v=19$m=19456,t=2,p=1$bmV3$bmV3aGFzaA";
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::ChangePassword {
                password_hash: new_hash.into(),
            },
        )
        .then_expect_events(vec![UserEvent::PasswordChanged {
            password_hash: sealed(id, new_hash),
        }]);
        assert_invalid(
            when(
                &world,
                vec![registered(id, Role::Student)],
                UserCommand::ChangePassword {
                    password_hash: "plaintext".into(),
                },
            ),
            "password",
        );
    }

    // --- erase ---

    #[test]
    fn a_user_erases_themself_and_their_email_and_key_are_gone() {
        let id = UserId::new();
        let world = TestWorld::default();
        hold_email(&world, "dana.levi@example.com", &id.to_string());
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::Erase {
                actor: Actor::user(id, Role::Student),
            },
        )
        .then_expect_events(vec![UserEvent::UserErased]);
        assert_eq!(email_holder(&world, "dana.levi@example.com"), None);
        let services = world.services();
        assert_eq!(
            block_on(services.vault.seal(id, "anything")),
            Err(PortError::Erased(id))
        );
        assert_eq!(block_on(services.vault.open(&sealed(id, "Dana"))), Ok(None));
    }

    #[test]
    fn an_admin_erases_anyone_and_the_email_can_be_used_again() {
        let id = UserId::new();
        let world = TestWorld::default();
        hold_email(&world, "dana.levi@example.com", &id.to_string());
        when(
            &world,
            vec![registered(id, Role::Teacher)],
            UserCommand::Erase {
                actor: Actor::user(UserId::new(), Role::Admin),
            },
        )
        .then_expect_events(vec![UserEvent::UserErased]);
        let newcomer = UserId::new();
        when(
            &world,
            vec![],
            register(newcomer, Role::Student, Actor::Anonymous),
        )
        .then_expect_events(vec![registered(newcomer, Role::Student)]);
    }

    #[test]
    fn nobody_else_may_erase_a_user() {
        let id = UserId::new();
        let world = TestWorld::default();
        hold_email(&world, "dana.levi@example.com", &id.to_string());
        for actor in [
            Actor::user(UserId::new(), Role::Teacher),
            Actor::user(UserId::new(), Role::Student),
            Actor::Anonymous,
        ] {
            let err = error_of(when(
                &world,
                vec![registered(id, Role::Student)],
                UserCommand::Erase { actor },
            ));
            assert_eq!(err.kind(), ErrorKind::Forbidden);
        }
        assert_eq!(
            email_holder(&world, "dana.levi@example.com"),
            Some(id.to_string())
        );
    }

    #[test]
    fn erasure_completes_even_if_the_key_was_already_shredded() {
        let id = UserId::new();
        let world = TestWorld::default();
        world.shred(id);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::Erase {
                actor: Actor::System,
            },
        )
        .then_expect_events(vec![UserEvent::UserErased]);
    }

    #[test]
    fn a_retried_erasure_after_the_shred_still_releases_the_email() {
        let id = UserId::new();
        let world = TestWorld::default();
        hold_email(&world, "dana.levi@example.com", &id.to_string());
        hold_email(
            &world,
            "someone.else@example.com",
            &UserId::new().to_string(),
        );
        // An earlier try shredded the key but never recorded `UserErased`: the sealed
        // address can no longer be opened.
        world.shred(id);
        when(
            &world,
            vec![registered(id, Role::Student)],
            UserCommand::Erase {
                actor: Actor::user(id, Role::Student),
            },
        )
        .then_expect_events(vec![UserEvent::UserErased]);
        assert_eq!(email_holder(&world, "dana.levi@example.com"), None);
        assert!(email_holder(&world, "someone.else@example.com").is_some());
    }

    #[test]
    fn a_user_is_erased_once() {
        let id = UserId::new();
        when(
            &TestWorld::default(),
            vec![registered(id, Role::Student), UserEvent::UserErased],
            UserCommand::Erase {
                actor: Actor::System,
            },
        )
        .then_expect_error(UserError::Erased);
    }

    // --- state and wire ---

    #[test]
    fn state_follows_the_events_and_survives_a_snapshot() {
        let id = UserId::new();
        let mut user = User::default();
        user.apply(registered(id, Role::Student));
        user.apply(UserEvent::AvatarSet {
            blob_path: format!("{id}/a.png"),
            content_type: "image/png".into(),
        });
        assert_eq!(user.id(), id);
        assert!(user.is_registered());
        assert!(!user.is_erased());
        assert_eq!(user.role(), Role::Student);
        assert_eq!(user.preferred_language(), Language::He);
        assert_eq!(user.hebrew_level(), Some(HebrewLevel::Beginner));
        assert_eq!(user.avatar().unwrap().content_type, "image/png");

        let json = serde_json::to_string(&user).unwrap();
        assert!(!json.contains("Dana"));
        assert_eq!(serde_json::from_str::<User>(&json).unwrap(), user);

        user.apply(UserEvent::UserErased);
        assert!(user.is_erased());
        assert_eq!(user.avatar(), None);
        assert_eq!(user.email, None);
    }

    #[test]
    fn events_are_named_after_their_variant_and_externally_tagged() {
        let id = UserId::new();
        let events = vec![
            registered(id, Role::Student),
            UserEvent::ProfileUpdated {
                first_name: None,
                last_name: None,
            },
            UserEvent::PreferredLanguageChanged {
                language: Language::En,
            },
            UserEvent::HebrewLevelChanged {
                level: HebrewLevel::Fluent,
            },
            UserEvent::InterestsReplaced {
                interests: sealed(id, "[]"),
            },
            UserEvent::RoleChanged {
                from: Role::Student,
                to: Role::Admin,
            },
            UserEvent::AvatarSet {
                blob_path: String::new(),
                content_type: String::new(),
            },
            UserEvent::AvatarCleared,
            UserEvent::PasswordChanged {
                password_hash: sealed(id, HASH),
            },
            UserEvent::UserErased,
        ];
        for event in events {
            assert_eq!(event.event_version(), "1.0");
            let json = serde_json::to_value(&event).unwrap();
            let tag = match &json {
                serde_json::Value::String(unit) => unit.clone(),
                other => other.as_object().unwrap().keys().next().unwrap().clone(),
            };
            assert_eq!(tag, event.event_type());
            assert_eq!(serde_json::from_value::<UserEvent>(json).unwrap(), event);
        }
    }

    #[test]
    fn port_failures_are_unavailable_unless_the_subject_was_erased() {
        let erased = UserError::from(PortError::Erased(UserId::new()));
        assert_eq!(erased.kind(), ErrorKind::Conflict);
        let down = UserError::from(PortError::Unavailable("key store down".into()));
        assert_eq!(down.kind(), ErrorKind::Unavailable);
        assert_eq!(down.to_string(), "key store down");
    }
}
