//! What a principal may do: actions, resources, grants, and the decision.
//!
//! **Actions** ([`Action`]) name what a call does: `stream:create`,
//! `stream:delete`, `stream:describe`, `stream:configure`, `record:put`,
//! `record:get`, `group:read`, `group:commit`, `group:admin`, and the
//! cluster-wide `admin:auth` (principals, tokens, grants, resource
//! policies), `admin:repair` (shard repair, lost+found), `admin:metrics`
//! (`/metrics`, DescribeBroker), `admin:console` (the admin port's web
//! console, which shows every stream's records) and `admin:account`
//! (account settings).
//!
//! **Resources** are `stream:<name>`, `group:<stream>/<group>` and `cluster`.
//! A grant's resource pattern is an exact resource or a prefix ending in
//! `*` (`stream:orders-*`, `group:order-events/*`, `*`); its action pattern
//! is an action, a family (`record:*`, `admin:*`) or `*`.
//!
//! **Decision** ([`decide`]): default deny; any matching deny grant wins
//! over every allow; otherwise any matching allow grant allows. An action
//! that reads or changes a stream implies describing it (as Kafka's Read,
//! Write, Delete and Alter imply Describe): `stream:describe` is allowed
//! wherever `record:put`, `record:get`, `stream:delete` or
//! `stream:configure` is, unless describe itself is denied.

use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create a stream.
    StreamCreate,
    /// Delete a stream.
    StreamDelete,
    /// Describe a stream, list it, list its shards.
    StreamDescribe,
    /// Change a stream's settings (retention, record size, tags, consumers).
    StreamConfigure,
    /// Write records.
    RecordPut,
    /// Read records (iterators, GetRecords, subscriptions, group polls).
    RecordGet,
    /// Join, poll, heartbeat, leave and describe a consumer group.
    GroupRead,
    /// Commit a consumer group's checkpoints.
    GroupCommit,
    /// Reset or delete a consumer group.
    GroupAdmin,
    /// Manage principals, tokens, grants and resource policies.
    AdminAuth,
    /// Repair shards, list and purge lost+found.
    AdminRepair,
    /// Read `/metrics` and DescribeBroker.
    AdminMetrics,
    /// Use the web console (`/ui`, `/api/v1`): it reads every stream's
    /// records; its changes are authorized as the caller's own.
    AdminConsole,
    /// Change account-wide settings.
    AdminAccount,
}

impl Action {
    /// Every action, in documentation order.
    pub const ALL: [Action; 14] = [
        Action::StreamCreate,
        Action::StreamDelete,
        Action::StreamDescribe,
        Action::StreamConfigure,
        Action::RecordPut,
        Action::RecordGet,
        Action::GroupRead,
        Action::GroupCommit,
        Action::GroupAdmin,
        Action::AdminAuth,
        Action::AdminRepair,
        Action::AdminMetrics,
        Action::AdminConsole,
        Action::AdminAccount,
    ];

    /// The action's name, `family:verb`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::StreamCreate => "stream:create",
            Action::StreamDelete => "stream:delete",
            Action::StreamDescribe => "stream:describe",
            Action::StreamConfigure => "stream:configure",
            Action::RecordPut => "record:put",
            Action::RecordGet => "record:get",
            Action::GroupRead => "group:read",
            Action::GroupCommit => "group:commit",
            Action::GroupAdmin => "group:admin",
            Action::AdminAuth => "admin:auth",
            Action::AdminRepair => "admin:repair",
            Action::AdminMetrics => "admin:metrics",
            Action::AdminConsole => "admin:console",
            Action::AdminAccount => "admin:account",
        }
    }

    /// The action named `name`.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// What a call acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A stream, by name.
    Stream(String),
    /// A consumer group of a stream.
    Group {
        /// The stream's name.
        stream: String,
        /// The group's name.
        group: String,
    },
    /// The broker as a whole.
    Cluster,
}

impl Resource {
    /// `stream:<name>`.
    pub fn stream(name: &str) -> Self {
        Resource::Stream(name.to_string())
    }

    /// `group:<stream>/<group>`.
    pub fn group(stream: &str, group: &str) -> Self {
        Resource::Group { stream: stream.to_string(), group: group.to_string() }
    }

    /// The resource `text` names exactly (`stream:<name>`,
    /// `group:<stream>/<group>` or `cluster`; no patterns), as
    /// [`Resource`]'s `Display` writes it.
    pub fn parse(text: &str) -> Option<Resource> {
        if text == "cluster" {
            return Some(Resource::Cluster);
        }
        if let Some(name) = text.strip_prefix("stream:") {
            return is_name(name).then(|| Resource::stream(name));
        }
        let (stream, group) = text.strip_prefix("group:")?.split_once('/')?;
        (is_name(stream) && is_name(group)).then(|| Resource::group(stream, group))
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Stream(s) => write!(f, "stream:{s}"),
            Resource::Group { stream, group } => write!(f, "group:{stream}/{group}"),
            Resource::Cluster => f.write_str("cluster"),
        }
    }
}

/// Whether a grant allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allows what it matches (unless a deny matches too).
    Allow,
    /// Denies what it matches, whatever else allows it.
    Deny,
}

impl Effect {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// One grant: (principal, effect, action pattern, resource pattern).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// Who.
    pub principal: String,
    /// Allow or deny.
    pub effect: Effect,
    /// An action, a family (`record:*`) or `*`.
    pub action: String,
    /// A resource, a prefix ending in `*`, or `*`.
    pub resource: String,
}

/// Stream and group names: Kinesis's `[a-zA-Z0-9_.-]{1,128}`.
fn is_name(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A principal's name: 1..=128 of `[a-zA-Z0-9_.@-]` (a certificate's
/// common name must fit this to name a principal).
pub fn is_principal_name(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
}

/// Checks a principal's name; the error names `field`.
pub fn validate_principal(field: &str, name: &str) -> Result<()> {
    if is_principal_name(name) {
        Ok(())
    } else {
        Err(BrokerError::invalid(field, format!("{name:?} must be 1..=128 of [a-zA-Z0-9_.@-]")))
    }
}

impl Grant {
    /// Checks the grant's patterns; errors name the field.
    pub fn validate(&self) -> Result<()> {
        validate_principal("principal", &self.principal)?;
        let action_ok = self.action == "*"
            || Action::parse(&self.action).is_some()
            || self
                .action
                .strip_suffix(":*")
                .is_some_and(|family| Action::ALL.iter().any(|a| a.as_str().starts_with(&format!("{family}:"))));
        if !action_ok {
            let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
            return Err(BrokerError::invalid(
                "action",
                format!("{:?} is not an action, a family (record:*) or *; actions: {}", self.action, known.join(", ")),
            ));
        }
        let r = self.resource.as_str();
        let (body, prefix) = match r.strip_suffix('*') {
            Some(b) => (b, true),
            None => (r, false),
        };
        let name_chars = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        let ok = match body {
            "" => prefix,
            "cluster" => !prefix,
            _ => {
                if let Some(name) = body.strip_prefix("stream:") {
                    // A prefix may end anywhere in a name; what it gives must be name characters.
                    name_chars(name) && (prefix || is_name(name))
                } else if let Some(rest) = body.strip_prefix("group:") {
                    match rest.split_once('/') {
                        None => prefix && name_chars(rest),
                        Some((stream, group)) => is_name(stream) && name_chars(group) && (prefix || is_name(group)),
                    }
                } else {
                    false
                }
            }
        };
        if !ok {
            return Err(BrokerError::invalid(
                "resource",
                format!(
                    "{r:?} must be stream:<name>, group:<stream>/<group> or cluster, exactly or as a prefix \
                     ending in * (stream:orders-*, group:orders/*, *)"
                ),
            ));
        }
        Ok(())
    }

    fn matches_action(&self, action: Action) -> bool {
        let a = action.as_str();
        self.action == "*"
            || self.action == a
            || self.action.strip_suffix('*').is_some_and(|family| family.ends_with(':') && a.starts_with(family))
    }

    fn matches_resource(&self, resource: &str) -> bool {
        match self.resource.strip_suffix('*') {
            Some(prefix) => resource.starts_with(prefix),
            None => self.resource == resource,
        }
    }

    /// Whether the grant covers `action` on `resource` (its text form).
    pub fn matches(&self, action: Action, resource: &str) -> bool {
        self.matches_action(action) && self.matches_resource(resource)
    }
}

/// Actions that imply `stream:describe` on the same stream.
const IMPLY_DESCRIBE: [Action; 4] =
    [Action::RecordPut, Action::RecordGet, Action::StreamDelete, Action::StreamConfigure];

/// The decision for `action` on `resource` under `grants` (a principal's
/// grants): see the module docs.
pub fn decide<'a>(grants: impl IntoIterator<Item = &'a Grant> + Clone, action: Action, resource: &Resource) -> bool {
    verdict(grants, action, resource) == Some(Effect::Allow)
}

/// What `grants` say about `action` on `resource`: an explicit `Deny`, an
/// `Allow`, or nothing (`None`, which [`decide`] treats as deny and a
/// Kinesis resource policy may still allow).
pub fn verdict<'a>(
    grants: impl IntoIterator<Item = &'a Grant> + Clone,
    action: Action,
    resource: &Resource,
) -> Option<Effect> {
    let resource = resource.to_string();
    let matching = |action: Action, effect: Effect| {
        grants.clone().into_iter().any(|g| g.effect == effect && g.matches(action, &resource))
    };
    if matching(action, Effect::Deny) {
        return Some(Effect::Deny);
    }
    let implied = || {
        action == Action::StreamDescribe
            && IMPLY_DESCRIBE.into_iter().any(|a| !matching(a, Effect::Deny) && matching(a, Effect::Allow))
    };
    (matching(action, Effect::Allow) || implied()).then_some(Effect::Allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(effect: Effect, action: &str, resource: &str) -> Grant {
        Grant { principal: "p".into(), effect, action: action.into(), resource: resource.into() }
    }

    #[test]
    fn a_resource_parses_from_what_display_writes_and_nothing_else() {
        for r in [Resource::stream("orders"), Resource::group("orders", "g.1"), Resource::Cluster] {
            assert_eq!(Resource::parse(&r.to_string()), Some(r));
        }
        for bad in ["", "*", "stream:", "stream:o*", "stream:a b", "group:o", "group:o/", "group:/g", "clusters"] {
            assert_eq!(Resource::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn patterns_validate_and_errors_name_the_field() {
        for (action, resource) in [
            ("record:put", "stream:orders"),
            ("record:*", "stream:order-*"),
            ("*", "*"),
            ("group:read", "group:orders/billing"),
            ("group:*", "group:orders/*"),
            ("group:read", "group:order*"),
            ("admin:*", "cluster"),
            ("stream:describe", "stream:*"),
        ] {
            grant(Effect::Allow, action, resource).validate().unwrap_or_else(|e| panic!("{action} {resource}: {e}"));
        }
        for (action, resource, field) in [
            ("record:write", "stream:orders", "action"),
            ("nope:*", "stream:orders", "action"),
            ("record:put", "orders", "resource"),
            ("record:put", "stream:a/b", "resource"),
            ("record:put", "stream:", "resource"),
            ("group:read", "group:orders", "resource"),
            ("admin:auth", "cluster*", "resource"),
        ] {
            let e = grant(Effect::Allow, action, resource).validate().expect_err(resource);
            assert!(
                matches!(&e, BrokerError::InvalidArgument { field: f, .. } if f == field),
                "{action} {resource}: {e}"
            );
        }
    }

    #[test]
    fn default_deny_exact_prefix_and_deny_overrides() {
        let orders = Resource::stream("orders");
        let audit = Resource::stream("orders-audit");
        assert!(!decide(&[], Action::RecordPut, &orders), "no grant: denied");
        let g = [grant(Effect::Allow, "record:put", "stream:orders")];
        assert!(decide(&g, Action::RecordPut, &orders));
        assert!(!decide(&g, Action::RecordPut, &audit), "exact does not match a longer name");
        assert!(!decide(&g, Action::RecordGet, &orders), "another action");
        let g = [
            grant(Effect::Allow, "record:*", "stream:orders*"),
            grant(Effect::Deny, "record:put", "stream:orders-audit"),
        ];
        assert!(decide(&g, Action::RecordGet, &audit), "prefix and family");
        assert!(!decide(&g, Action::RecordPut, &audit), "deny overrides allow");
        assert!(decide(&g, Action::RecordPut, &orders));
        let everything = [grant(Effect::Allow, "*", "*")];
        for a in Action::ALL {
            assert!(decide(&everything, a, &Resource::Cluster));
        }
    }

    #[test]
    fn reading_or_writing_a_stream_implies_describing_it_unless_denied() {
        let s = Resource::stream("orders");
        assert!(decide(&[grant(Effect::Allow, "record:get", "stream:orders")], Action::StreamDescribe, &s));
        assert!(!decide(&[grant(Effect::Allow, "stream:create", "stream:orders")], Action::StreamDescribe, &s));
        let denied =
            [grant(Effect::Allow, "record:get", "stream:*"), grant(Effect::Deny, "stream:describe", "stream:orders")];
        assert!(!decide(&denied, Action::StreamDescribe, &s));
        let put_denied =
            [grant(Effect::Allow, "record:put", "stream:*"), grant(Effect::Deny, "record:put", "stream:orders")];
        assert!(!decide(&put_denied, Action::StreamDescribe, &s), "a denied action implies nothing");
    }
}
