//! Who is online, across every manager replica, kept in Redis (original §5 "Presence").
//!
//! Why leases: the original kept a set of connection ids per user and removed them on
//! disconnect, so a replica that crashed left its users "online" for a day. Here every
//! connection is a member of its user's sorted set **scored by when its lease ends**; the
//! replica holding the connection renews all its leases every refresh interval, and anything
//! whose lease ran out is treated as gone. A crashed replica's connections therefore vanish
//! within one lease, reported by whichever replica sweeps first.
//!
//! ```text
//! teachin:{ns}:presence:conns:{user}  ZSET connection id → lease end (ms, Redis clock)
//! teachin:{ns}:presence:online        ZSET user id → latest lease end of its connections
//! teachin:{ns}:presence:meta          HASH user id → {"role":…, "name":…}
//! ```
//!
//! Every change is one Lua script, so two replicas never both announce the same user coming
//! online or going offline, and all of them read time from Redis (`TIME`), so replica clocks
//! do not matter. Each script returns the changes it made; the hub turns them into
//! `UserOnline`, `UpdateUserConnections` and `UserOffline` for the `Admins` group.
//!
//! As in the original, admins are not tracked: the list is of the people admins watch.

use fred::prelude::{Client, LuaInterface};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;

/// A change admins are told about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The user's first live connection appeared.
    Online { user: UserId, connections: u32 },
    /// The user is still online with this many connections.
    Connections { user: UserId, connections: u32 },
    /// The user's last connection ended or lapsed.
    Offline { user: UserId },
}

/// One online user, for an admin's list (original `OnlineUserDto`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OnlineUser {
    pub user_id: UserId,
    pub role: Role,
    pub name: Option<String>,
    pub connections: u32,
}

/// What is stored about an online user besides the count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub role: Role,
    pub name: Option<String>,
}

/// Prepended to every script: the Redis clock in milliseconds, and `keep`, which lets a
/// user's connection set expire one lease after its latest lease ends (a safety net: the
/// sweep is what reports users offline).
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, lease)
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('PEXPIREAT', key, tonumber(top[2]) + lease) end
end
"#;

/// KEYS: conns, online, meta. ARGV: user, connection, lease ms, meta json.
/// Returns {live connections before, after}.
const CONNECT: &str = r#"
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
keep(KEYS[1], lease)
redis.call('ZADD', KEYS[2], 'GT', now + lease, ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return {tostring(before), tostring(redis.call('ZCARD', KEYS[1]))}
"#;

/// KEYS: conns, online, meta. ARGV: connection, user.
/// Returns {1 if this call removed the connection, live connections left}.
const DISCONNECT: &str = r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return {tostring(removed), tostring(left)}
"#;

/// ARGV: key prefix, lease ms, then per user: user, meta json, n, n connection ids.
/// Renews the leases; drops the user's lapsed connections (a crashed replica's); re-adds a
/// connection a sweep removed during a stall. Returns flat {kind, user, count} triples.
const REFRESH: &str = r#"
local prefix, lease = ARGV[1], tonumber(ARGV[2])
local online, meta = prefix .. 'online', prefix .. 'meta'
local out = {}
local i = 3
while i <= #ARGV do
  local user, info, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = prefix .. 'conns:' .. user
  local before = redis.call('ZCARD', key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local live = redis.call('ZCARD', key)
  for j = 1, n do
    redis.call('ZADD', key, now + lease, ARGV[i + 2 + j])
  end
  keep(key, lease)
  redis.call('ZADD', online, 'GT', now + lease, user)
  local after = redis.call('ZCARD', key)
  if live == 0 then
    redis.call('HSET', meta, user, info)
    table.insert(out, 'online'); table.insert(out, user); table.insert(out, tostring(after))
  elseif after ~= before then
    table.insert(out, 'count'); table.insert(out, user); table.insert(out, tostring(after))
  end
  i = i + 3 + n
end
return out
"#;

/// ARGV: key prefix, max users. Ends the users none of whose leases were renewed in time.
/// Returns flat {kind, user, count} triples.
const SWEEP: &str = r#"
local prefix = ARGV[1]
local online, meta = prefix .. 'online', prefix .. 'meta'
local due = redis.call('ZRANGEBYSCORE', online, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, user in ipairs(due) do
  local key = prefix .. 'conns:' .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local left = redis.call('ZCARD', key)
  if left == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', online, user)
    redis.call('HDEL', meta, user)
    table.insert(out, 'offline'); table.insert(out, user); table.insert(out, '0')
  else
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('ZADD', online, top[2], user)
  end
end
return out
"#;

/// ARGV: key prefix. Returns flat {user, live connections, meta json} triples.
const ONLINE: &str = r#"
local prefix = ARGV[1]
local users = redis.call('ZRANGEBYSCORE', prefix .. 'online', now, '+inf')
local out = {}
for _, user in ipairs(users) do
  local count = redis.call('ZCOUNT', prefix .. 'conns:' .. user, now, '+inf')
  if count > 0 then
    table.insert(out, user); table.insert(out, tostring(count))
    table.insert(out, redis.call('HGET', prefix .. 'meta', user) or '')
  end
end
return out
"#;

/// Roughly how many arguments one lease-renewal script takes (a user's connections are
/// never split across two).
const REFRESH_BATCH_ARGS: usize = 2_000;

/// How many lapsed users one sweep ends at most (the next sweep takes the rest).
const SWEEP_LIMIT: usize = 500;

/// Presence for one namespace.
#[derive(Clone)]
pub(crate) struct Presence {
    redis: Client,
    prefix: String,
    lease: Duration,
}

impl Presence {
    pub fn new(redis: Client, namespace: &str, lease: Duration) -> Self {
        Presence {
            redis,
            prefix: format!("teachin:{namespace}:presence:"),
            lease,
        }
    }

    fn conns_key(&self, user: UserId) -> String {
        format!("{}conns:{user}", self.prefix)
    }

    fn keys(&self, user: UserId) -> Vec<String> {
        vec![
            self.conns_key(user),
            format!("{}online", self.prefix),
            format!("{}meta", self.prefix),
        ]
    }

    fn lease_ms(&self) -> String {
        self.lease.as_millis().max(1).to_string()
    }

    async fn eval(
        &self,
        body: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<String>, fred::error::Error> {
        let script = format!("{PRELUDE}{body}");
        self.redis.eval(script, keys, args).await
    }

    /// A connection of a tracked user opened.
    pub async fn connect(
        &self,
        user: UserId,
        connection: &str,
        meta: &Meta,
    ) -> Result<PresenceChange, fred::error::Error> {
        let meta = serde_json::to_string(meta).expect("meta serializes");
        let reply = self
            .eval(
                CONNECT,
                self.keys(user),
                vec![
                    user.to_string(),
                    connection.to_owned(),
                    self.lease_ms(),
                    meta,
                ],
            )
            .await?;
        let before: u32 = number(reply.first());
        let after: u32 = number(reply.get(1));
        Ok(if before == 0 {
            PresenceChange::Online {
                user,
                connections: after,
            }
        } else {
            PresenceChange::Connections {
                user,
                connections: after,
            }
        })
    }

    /// A connection of a tracked user closed. `None` when a sweep had already ended it.
    pub async fn disconnect(
        &self,
        user: UserId,
        connection: &str,
    ) -> Result<Option<PresenceChange>, fred::error::Error> {
        let reply = self
            .eval(
                DISCONNECT,
                self.keys(user),
                vec![connection.to_owned(), user.to_string()],
            )
            .await?;
        let removed: u32 = number(reply.first());
        let left: u32 = number(reply.get(1));
        Ok(match (removed, left) {
            (0, _) => None,
            (_, 0) => Some(PresenceChange::Offline { user }),
            (_, left) => Some(PresenceChange::Connections {
                user,
                connections: left,
            }),
        })
    }

    /// Renews the leases of this replica's connections of tracked users.
    pub async fn refresh(
        &self,
        connections: &[(String, UserId, Meta)],
    ) -> Result<Vec<PresenceChange>, fred::error::Error> {
        if connections.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_user: std::collections::BTreeMap<UserId, (String, Vec<String>)> =
            Default::default();
        for (id, user, meta) in connections {
            by_user
                .entry(*user)
                .or_insert_with(|| {
                    (
                        serde_json::to_string(meta).expect("meta serializes"),
                        vec![],
                    )
                })
                .1
                .push(id.clone());
        }
        // In batches, so one script never holds Redis for long.
        let mut changes = Vec::new();
        let mut args = Vec::new();
        for (user, (meta, ids)) in by_user {
            args.push(user.to_string());
            args.push(meta);
            args.push(ids.len().to_string());
            args.extend(ids);
            if args.len() >= REFRESH_BATCH_ARGS {
                changes.extend(self.refresh_batch(std::mem::take(&mut args)).await?);
            }
        }
        if !args.is_empty() {
            changes.extend(self.refresh_batch(args).await?);
        }
        Ok(changes)
    }

    async fn refresh_batch(
        &self,
        users: Vec<String>,
    ) -> Result<Vec<PresenceChange>, fred::error::Error> {
        let mut args = vec![self.prefix.clone(), self.lease_ms()];
        args.extend(users);
        let reply = self.eval(REFRESH, vec![], args).await?;
        Ok(changes(&reply))
    }

    /// Ends the users whose leases all lapsed (their replica died or stalled).
    pub async fn sweep(&self) -> Result<Vec<PresenceChange>, fred::error::Error> {
        let reply = self
            .eval(
                SWEEP,
                vec![],
                vec![self.prefix.clone(), SWEEP_LIMIT.to_string()],
            )
            .await?;
        Ok(changes(&reply))
    }

    /// Everyone online now, with their live connection counts.
    pub async fn online(&self) -> Result<Vec<OnlineUser>, fred::error::Error> {
        let reply = self.eval(ONLINE, vec![], vec![self.prefix.clone()]).await?;
        Ok(reply
            .chunks_exact(3)
            .filter_map(|triple| {
                let user_id: UserId = triple[0].parse().ok()?;
                let meta: Option<Meta> = serde_json::from_str(&triple[2]).ok();
                Some(OnlineUser {
                    user_id,
                    role: meta.as_ref().map(|m| m.role).unwrap_or_default(),
                    name: meta.and_then(|m| m.name),
                    connections: triple[1].parse().unwrap_or(0),
                })
            })
            .collect())
    }
}

fn number(value: Option<&String>) -> u32 {
    value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn changes(reply: &[String]) -> Vec<PresenceChange> {
    reply
        .chunks_exact(3)
        .filter_map(|triple| {
            let user: UserId = triple[1].parse().ok()?;
            let connections = triple[2].parse().unwrap_or(0);
            match triple[0].as_str() {
                "online" => Some(PresenceChange::Online { user, connections }),
                "count" => Some(PresenceChange::Connections { user, connections }),
                "offline" => Some(PresenceChange::Offline { user }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (`TEACHIN_TEST_REDIS_URL`, default 127.0.0.1:6379), each test
    //! in a namespace of its own.

    use super::*;
    use fred::prelude::{Builder, ClientLike, Config};

    async fn presence(lease: Duration) -> Presence {
        let url = std::env::var("TEACHIN_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let client = Builder::from_config(Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        Presence::new(client, &format!("test-{}", uuid::Uuid::new_v4()), lease)
    }

    fn meta() -> Meta {
        Meta {
            role: Role::Student,
            name: Some("Dana Levi".into()),
        }
    }

    #[tokio::test]
    async fn first_connection_online_more_connections_counted_last_one_offline() {
        let p = presence(Duration::from_secs(60)).await;
        let user = UserId::new();
        assert_eq!(
            p.connect(user, "c1", &meta()).await.unwrap(),
            PresenceChange::Online {
                user,
                connections: 1
            }
        );
        assert_eq!(
            p.connect(user, "c2", &meta()).await.unwrap(),
            PresenceChange::Connections {
                user,
                connections: 2
            }
        );
        let online = p.online().await.unwrap();
        assert_eq!(
            online,
            vec![OnlineUser {
                user_id: user,
                role: Role::Student,
                name: Some("Dana Levi".into()),
                connections: 2
            }]
        );
        assert_eq!(
            p.disconnect(user, "c1").await.unwrap(),
            Some(PresenceChange::Connections {
                user,
                connections: 1
            })
        );
        assert_eq!(
            p.disconnect(user, "c2").await.unwrap(),
            Some(PresenceChange::Offline { user })
        );
        assert_eq!(p.disconnect(user, "c2").await.unwrap(), None, "only once");
        assert!(p.online().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_crashed_replicas_connections_lapse_and_one_sweep_reports_them() {
        // A lease so short it has lapsed by the time we look: the replica "crashed".
        let crashed = presence(Duration::from_millis(1)).await;
        let user = UserId::new();
        crashed.connect(user, "lost", &meta()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            crashed.online().await.unwrap().is_empty(),
            "a lapsed lease is not online"
        );
        let first = crashed.sweep().await.unwrap();
        let second = crashed.sweep().await.unwrap();
        assert_eq!(first, vec![PresenceChange::Offline { user }]);
        assert!(second.is_empty(), "two sweepers never both report it");
    }

    #[tokio::test]
    async fn renewal_keeps_live_connections_and_drops_a_dead_replicas() {
        let live = presence(Duration::from_secs(60)).await;
        let dead = Presence {
            lease: Duration::from_millis(1),
            ..live.clone()
        };
        let user = UserId::new();
        live.connect(user, "here", &meta()).await.unwrap();
        dead.connect(user, "there", &meta()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let changes = live
            .refresh(&[("here".into(), user, meta())])
            .await
            .unwrap();
        assert_eq!(
            changes,
            vec![PresenceChange::Connections {
                user,
                connections: 1
            }]
        );
        assert_eq!(live.online().await.unwrap()[0].connections, 1);
        assert!(live.sweep().await.unwrap().is_empty());

        // A connection a sweep ended during a stall comes back online when renewed.
        let stalled = UserId::new();
        dead.connect(stalled, "slow", &meta()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            live.sweep().await.unwrap(),
            vec![PresenceChange::Offline { user: stalled }]
        );
        assert_eq!(
            live.refresh(&[("slow".into(), stalled, meta())])
                .await
                .unwrap(),
            vec![PresenceChange::Online {
                user: stalled,
                connections: 1
            }]
        );
    }
}
