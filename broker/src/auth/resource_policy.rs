//! Kinesis resource policies: the IAM-style JSON documents that
//! `PutResourcePolicy` attaches to a stream or a registered consumer, and
//! their evaluation on Kinesis API calls.
//!
//! **Where they apply.** Only to calls through the Kinesis API, whose IAM
//! action is `kinesis:<Operation>` (`kinesis:PutRecord`); gRPC and admin
//! calls are decided by grants alone. A super user (the bootstrap admin,
//! `auth.super_users`) is not subject to them, which is the way out of a
//! policy that locks everyone out, as the root user is on AWS.
//!
//! **Decision** (as AWS decides for a caller of the same account):
//! 1. an explicit deny, in the caller's grants or in a resource policy of
//!    the resource (the stream's, and the consumer's for calls naming a
//!    consumer), refuses;
//! 2. otherwise an allow in either permits;
//! 3. otherwise the call is denied (default deny).
//!
//! **The subset understood.** `Version` (`2012-10-17` or `2008-10-17`),
//! `Statement` (one object or a list), each with `Sid`, `Effect`
//! (`Allow`/`Deny`), `Principal` (`"*"` or `{"AWS": …}` with `"*"`, the
//! account id, `arn:aws:iam::<account>:root`, or
//! `arn:aws:iam::<account>:user/<principal>` / `role/<principal>`, one or a
//! list), `Action` (`kinesis:<Operation>` or `*`, with `*` and `?`
//! wildcards, case-insensitive) and `Resource` (ARNs or `*`, with
//! wildcards). Anything else (`Condition`, `NotAction`, `NotPrincipal`,
//! `NotResource`, other principal types) is refused when the policy is put,
//! with an error naming the element: ignoring a `Condition` would widen an
//! allow, so a policy is enforced whole or not stored.
//!
//! **Principals.** A principal of this broker is
//! `arn:aws:iam::<account>:user/<name>` (or `role/<name>`). Naming the
//! account (its id or `…:root`) in an allow delegates to the grants, as on
//! AWS (it allows nothing by itself); in a deny it denies every principal of
//! the account. Principals of other accounts never match.

use serde_json::Value;

use crate::error::{BrokerError, Result};

use super::policy::Effect;

/// The field errors name.
const FIELD: &str = "policy";

/// A parsed resource policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePolicy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    principals: Vec<PrincipalPattern>,
    /// Lowercased `kinesis:…` patterns, or `*`.
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalPattern {
    /// `*`: anyone.
    Anyone,
    /// Every principal of an account (its id or `…:root`).
    Account(String),
    /// One principal of an account (`…:user/<name>` or `…:role/<name>`).
    Named { account: String, name: String },
}

/// One Kinesis call, as a policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The caller's principal.
    pub principal: &'a str,
    /// The broker's account id (`kinesis.account_id`).
    pub account: &'a str,
    /// `kinesis:<Operation>`.
    pub action: &'a str,
    /// The ARN of the stream or consumer the call is on.
    pub resource: &'a str,
}

fn invalid(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::invalid(FIELD, what.to_string())
}

/// A string or a list of strings, at `path`.
fn strings(path: &str, value: &Value) -> Result<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| invalid(format!("{path}[{i}] must be a string")))
            })
            .collect(),
        _ => Err(invalid(format!("{path} must be a string or a non-empty list of strings"))),
    }
}

fn principal(path: &str, text: &str) -> Result<PrincipalPattern> {
    if text == "*" {
        return Ok(PrincipalPattern::Anyone);
    }
    if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(PrincipalPattern::Account(text.to_string()));
    }
    let bad = || {
        invalid(format!(
            "{path} = {text:?}: a principal is \"*\", an account id, arn:aws:iam::<account>:root, \
             or arn:aws:iam::<account>:user/<name> (or role/<name>)"
        ))
    };
    let rest = text.strip_prefix("arn:aws:iam::").ok_or_else(bad)?;
    let (account, resource) = rest.split_once(':').ok_or_else(bad)?;
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if resource == "root" {
        return Ok(PrincipalPattern::Account(account.to_string()));
    }
    let path_and_name = resource.strip_prefix("user/").or_else(|| resource.strip_prefix("role/")).ok_or_else(bad)?;
    // IAM names may carry a path (`user/team/alice`); the name is its last part.
    let name = path_and_name.rsplit('/').next().unwrap_or_default();
    if !super::policy::is_principal_name(name) {
        return Err(bad());
    }
    Ok(PrincipalPattern::Named { account: account.to_string(), name: name.to_string() })
}

fn principals(path: &str, value: &Value) -> Result<Vec<PrincipalPattern>> {
    match value {
        Value::String(s) if s == "*" => Ok(vec![PrincipalPattern::Anyone]),
        Value::Object(map) => {
            if let Some(other) = map.keys().find(|k| k.as_str() != "AWS") {
                return Err(invalid(format!(
                    "{path}.{other}: only AWS principals are supported (principals of this broker)"
                )));
            }
            let aws = map.get("AWS").ok_or_else(|| invalid(format!("{path} must name AWS principals")))?;
            strings(&format!("{path}.AWS"), aws)?
                .iter()
                .enumerate()
                .map(|(i, p)| principal(&format!("{path}.AWS[{i}]"), p))
                .collect()
        }
        _ => Err(invalid(format!("{path} must be \"*\" or {{\"AWS\": …}}"))),
    }
}

fn statement(path: &str, value: &Value) -> Result<Statement> {
    let map = value.as_object().ok_or_else(|| invalid(format!("{path} must be an object")))?;
    for key in map.keys() {
        match key.as_str() {
            "Sid" | "Effect" | "Principal" | "Action" | "Resource" => {}
            "Condition" | "NotAction" | "NotPrincipal" | "NotResource" => {
                return Err(invalid(format!(
                    "{path}.{key} is not supported: the broker enforces a policy whole or refuses it"
                )));
            }
            other => return Err(invalid(format!("{path}.{other} is not a policy element"))),
        }
    }
    let required = |key: &str| map.get(key).ok_or_else(|| invalid(format!("{path}.{key} is required")));
    let effect = match required("Effect")?.as_str() {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => return Err(invalid(format!("{path}.Effect must be \"Allow\" or \"Deny\""))),
    };
    let actions = strings(&format!("{path}.Action"), required("Action")?)?;
    for (i, a) in actions.iter().enumerate() {
        let lower = a.to_ascii_lowercase();
        let service_ok = lower == "*" || lower.strip_prefix("kinesis:").is_some_and(|op| !op.is_empty());
        if !service_ok {
            return Err(invalid(format!("{path}.Action[{i}] = {a:?} must be kinesis:<Operation> or \"*\"")));
        }
    }
    let resources = strings(&format!("{path}.Resource"), required("Resource")?)?;
    for (i, r) in resources.iter().enumerate() {
        if r != "*" && !r.starts_with("arn:aws:kinesis:") {
            return Err(invalid(format!("{path}.Resource[{i}] = {r:?} must be a Kinesis ARN or \"*\"")));
        }
    }
    Ok(Statement {
        effect,
        principals: principals(&format!("{path}.Principal"), required("Principal")?)?,
        actions: actions.iter().map(|a| a.to_ascii_lowercase()).collect(),
        resources,
    })
}

impl ResourcePolicy {
    /// Parses and checks a policy document; errors name the element
    /// (`Statement[1].Effect`).
    pub fn parse(text: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(text).map_err(|e| invalid(format!("is not JSON: {e}")))?;
        let map = doc.as_object().ok_or_else(|| invalid("must be a JSON policy document (an object)"))?;
        for key in map.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(invalid(format!("{key} is not a policy element (Version, Id, Statement)")));
            }
        }
        if let Some(v) = map.get("Version")
            && !matches!(v.as_str(), Some("2012-10-17" | "2008-10-17"))
        {
            return Err(invalid("Version must be \"2012-10-17\" or \"2008-10-17\""));
        }
        let statements = match map.get("Statement") {
            Some(Value::Array(list)) => {
                list.iter().enumerate().map(|(i, s)| statement(&format!("Statement[{i}]"), s)).collect()
            }
            Some(one @ Value::Object(_)) => statement("Statement", one).map(|s| vec![s]),
            _ => Err(invalid("Statement must be an object or a list of objects")),
        }?;
        Ok(Self { statements })
    }

    /// The policy's verdict on `request`: `Deny` if a deny statement
    /// matches, else `Allow` if an allow statement names the caller, else
    /// `None` (the policy says nothing).
    pub fn evaluate(&self, request: &Request<'_>) -> Option<Effect> {
        let action_name = request.action.to_ascii_lowercase();
        let mut verdict = None;
        for s in &self.statements {
            let action = s.actions.iter().any(|p| glob(p, &action_name));
            if !action || !s.resources.iter().any(|p| glob(p, request.resource)) {
                continue;
            }
            let named = s.principals.iter().any(|p| match p {
                PrincipalPattern::Anyone => true,
                // An account in an allow delegates to the grants; in a deny it covers everyone in it.
                PrincipalPattern::Account(a) => s.effect == Effect::Deny && a == request.account,
                PrincipalPattern::Named { account, name } => account == request.account && name == request.principal,
            });
            match (named, s.effect) {
                (true, Effect::Deny) => return Some(Effect::Deny),
                (true, Effect::Allow) => verdict = Some(Effect::Allow),
                (false, _) => {}
            }
        }
        verdict
    }
}

/// IAM wildcard match: `*` any run of characters, `?` any one character.
/// Byte-wise: ARNs and action names are ASCII, and a non-ASCII pattern
/// byte matches no ASCII text either way.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "000000000000";
    const STREAM: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/orders";

    fn req<'a>(principal: &'a str, action: &'a str, resource: &'a str) -> Request<'a> {
        Request { principal, account: ACCOUNT, action, resource }
    }

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(glob("kinesis:get*", "kinesis:getrecords"));
        assert!(glob("kinesis:?etrecords", "kinesis:getrecords"));
        assert!(glob("*", ""));
        assert!(glob("arn:aws:kinesis:*:*:stream/ord*", STREAM));
        assert!(!glob("kinesis:put*", "kinesis:getrecords"));
        assert!(!glob("arn:aws:kinesis:us-east-1:000000000000:stream/order", STREAM));
        assert!(glob("a*b*c", "aXXbYYc") && !glob("a*b*c", "aXXbYY"));
    }

    #[test]
    fn allow_deny_and_silence() {
        let p = ResourcePolicy::parse(
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::000000000000:user/reader"]},
                 "Action":["kinesis:Get*","kinesis:DescribeStreamSummary"],"Resource":"arn:aws:kinesis:us-east-1:000000000000:stream/orders"},
                {"Effect":"Deny","Principal":"*","Action":"kinesis:DeleteStream","Resource":"*"}]}"#,
        )
        .expect("valid");
        assert_eq!(p.evaluate(&req("reader", "kinesis:GetRecords", STREAM)), Some(Effect::Allow));
        assert_eq!(p.evaluate(&req("reader", "kinesis:getsharditerator", STREAM)), Some(Effect::Allow));
        assert_eq!(p.evaluate(&req("reader", "kinesis:PutRecord", STREAM)), None, "not an allowed action");
        assert_eq!(p.evaluate(&req("writer", "kinesis:GetRecords", STREAM)), None, "another principal");
        let other = "arn:aws:kinesis:us-east-1:000000000000:stream/other";
        assert_eq!(p.evaluate(&req("reader", "kinesis:GetRecords", other)), None, "another stream");
        assert_eq!(p.evaluate(&req("admin-ish", "kinesis:DeleteStream", STREAM)), Some(Effect::Deny));
    }

    #[test]
    fn an_account_principal_delegates_in_an_allow_and_covers_all_in_a_deny() {
        let allow = ResourcePolicy::parse(
            r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:root"},"Action":"*","Resource":"*"}}"#,
        )
        .expect("valid");
        assert_eq!(allow.evaluate(&req("anyone", "kinesis:PutRecord", STREAM)), None);
        let deny = ResourcePolicy::parse(
            r#"{"Statement":{"Effect":"Deny","Principal":{"AWS":"000000000000"},"Action":"kinesis:PutRecord","Resource":"*"}}"#,
        )
        .expect("valid");
        assert_eq!(deny.evaluate(&req("anyone", "kinesis:PutRecord", STREAM)), Some(Effect::Deny));
        let foreign = ResourcePolicy::parse(
            r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111111111111:user/reader"},"Action":"*","Resource":"*"}}"#,
        )
        .expect("valid");
        assert_eq!(foreign.evaluate(&req("reader", "kinesis:GetRecords", STREAM)), None, "another account's reader");
    }

    #[test]
    fn what_is_not_enforced_is_refused_naming_the_element() {
        for (doc, names) in [
            ("not json", "is not JSON"),
            ("[]", "an object"),
            ("{}", "Statement"),
            (r#"{"Version":"2020-01-01","Statement":[]}"#, "Version"),
            (
                r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"*","Resource":"*"}]}"#,
                "Statement[0].Effect",
            ),
            (r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*"}]}"#, "Statement[0].Resource is required"),
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*","Condition":{}}]}"#,
                "Statement[0].Condition is not supported",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"*","Resource":"*"}]}"#,
                "Statement[0].Principal.Service",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"*","Resource":"*"}]}"#,
                "Statement[0].Principal.AWS[0]",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}]}"#,
                "Statement[0].Action[0]",
            ),
            (
                r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"*","Resource":["*", 3]}]}"#,
                "Statement[0].Resource[1]",
            ),
        ] {
            let e = ResourcePolicy::parse(doc).expect_err(doc).to_string();
            assert!(e.contains("policy") && e.contains(names), "{doc}: {e}");
        }
    }
}
