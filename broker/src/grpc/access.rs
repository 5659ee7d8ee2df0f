//! The AccessControl gRPC edge: principals, tokens, grants and WhoAmI over
//! [`crate::auth::store`]. Every call but WhoAmI and CheckAccess needs
//! `admin:auth` on `cluster`; CheckAccess answers for the caller itself
//! with [`Auth::authorize`], the rule every call is authorized with. Changes block on a durable commit, so they run off the
//! reactor; the token of CreateToken is in its response only.

use std::sync::Arc;

use proto::v1 as pb;
use proto::v1::access_control_server::AccessControl;
use tonic::{Request, Response, Status};

use super::unary;
use crate::auth::policy::{Action, Effect, Grant, Resource};
use crate::auth::store::{AuthStore, TokenRecord};
use crate::auth::{Auth, current};
use crate::clock::Clock;
use crate::error::{BrokerError, Result};

/// The AccessControl service.
#[derive(Debug, Clone)]
pub struct AccessService {
    auth: Arc<Auth>,
    clock: Arc<dyn Clock>,
    request_timeout_ms: u64,
}

impl AccessService {
    /// A service over `auth`'s store.
    pub fn new(auth: Arc<Auth>, clock: Arc<dyn Clock>, request_timeout_ms: u64) -> Self {
        Self { auth, clock, request_timeout_ms }
    }

    fn deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }

    /// The store, once the caller may manage access.
    fn admin(&self) -> Result<Arc<AuthStore>> {
        self.auth.authorize(&current(), Action::AdminAuth, &Resource::Cluster)?;
        self.auth
            .store()
            .cloned()
            .ok_or_else(|| BrokerError::Unavailable("the broker is starting; retry shortly".into()))
    }

    /// Runs a change that blocks on a durable commit.
    async fn change<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AuthStore, u64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.admin()?;
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || f(&store, now))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("the access store task failed: {e}")))?
    }
}

fn token_info(t: TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id,
        principal: t.principal,
        description: t.description,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms.unwrap_or(0),
        revoked_at_ms: t.revoked_at_ms.unwrap_or(0),
    }
}

fn grant_to_pb(g: Grant) -> pb::Grant {
    pb::Grant {
        principal: g.principal,
        effect: match g.effect {
            Effect::Allow => pb::Effect::Allow,
            Effect::Deny => pb::Effect::Deny,
        } as i32,
        action: g.action,
        resource: g.resource,
    }
}

fn grant_of(g: Option<pb::Grant>) -> Result<Grant> {
    let g = g.ok_or_else(|| BrokerError::invalid("grant", "required"))?;
    let effect = match pb::Effect::try_from(g.effect) {
        Ok(pb::Effect::Allow) => Effect::Allow,
        Ok(pb::Effect::Deny) => Effect::Deny,
        _ => return Err(BrokerError::invalid("grant.effect", "must be ALLOW or DENY")),
    };
    Ok(Grant { principal: g.principal, effect, action: g.action, resource: g.resource })
}

fn principal_to_pb(p: crate::auth::store::PrincipalRecord) -> pb::Principal {
    pb::Principal { name: p.name, description: p.description, created_at_ms: p.created_at_ms }
}

#[tonic::async_trait]
impl AccessControl for AccessService {
    async fn who_am_i(&self, _req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        unary("WhoAmI", self.deadline(), async {
            let caller = current();
            let grants = match (&caller.principal, self.auth.store()) {
                (Some(p), Some(store)) => store.grants(Some(p)),
                _ => Vec::new(),
            };
            Ok(pb::WhoAmIResponse {
                principal: caller.principal.clone().unwrap_or_default(),
                credential: caller.credential.as_str().into(),
                token_id: match &caller.credential {
                    crate::auth::Credential::Token(id) => id.clone(),
                    _ => String::new(),
                },
                authentication_enabled: self.auth.enabled(),
                super_user: self.auth.is_super_user(&caller),
                grants: grants.into_iter().map(grant_to_pb).collect(),
            })
        })
        .await
    }

    async fn check_access(
        &self,
        req: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let r = req.into_inner();
        unary("CheckAccess", self.deadline(), async {
            let caller = current();
            let action = Action::parse(&r.action).ok_or_else(|| {
                BrokerError::invalid("action", format!("{:?} is not an action (e.g. record:put)", r.action))
            })?;
            let resource = Resource::parse(&r.resource).ok_or_else(|| {
                BrokerError::invalid(
                    "resource",
                    format!("{:?} must be stream:<name>, group:<stream>/<group> or cluster", r.resource),
                )
            })?;
            // The caller's credential is checked again here (a token revoked
            // since the layer let the call in is UNAUTHENTICATED), and a
            // refusal is counted as every refused call is.
            let allowed = match self.auth.authorize(&caller, action, &resource) {
                Ok(()) => true,
                Err(BrokerError::PermissionDenied { .. }) => false,
                Err(e) => return Err(e),
            };
            Ok(pb::CheckAccessResponse {
                principal: caller.principal.clone().unwrap_or_default(),
                allowed,
                authentication_enabled: self.auth.enabled(),
            })
        })
        .await
    }

    async fn create_principal(
        &self,
        req: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::CreatePrincipalResponse>, Status> {
        let r = req.into_inner();
        unary("CreatePrincipal", self.deadline(), async {
            let p = self.change(move |s, now| s.create_principal(&r.name, &r.description, now)).await?;
            tracing::info!(principal = %p.name, by = %current().name(), "principal created");
            Ok(pb::CreatePrincipalResponse { principal: Some(principal_to_pb(p)) })
        })
        .await
    }

    async fn delete_principal(
        &self,
        req: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        let r = req.into_inner();
        unary("DeletePrincipal", self.deadline(), async {
            let name = r.name.clone();
            let (tokens, grants) = self.change(move |s, _| s.delete_principal(&r.name)).await?;
            tracing::info!(principal = %name, tokens, grants, by = %current().name(), "principal deleted");
            Ok(pb::DeletePrincipalResponse {
                tokens_removed: u32::try_from(tokens).unwrap_or(u32::MAX),
                grants_removed: u32::try_from(grants).unwrap_or(u32::MAX),
            })
        })
        .await
    }

    async fn list_principals(
        &self,
        _req: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        unary("ListPrincipals", self.deadline(), async {
            let store = self.admin()?;
            Ok(pb::ListPrincipalsResponse { principals: store.principals().into_iter().map(principal_to_pb).collect() })
        })
        .await
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let r = req.into_inner();
        unary("CreateToken", self.deadline(), async {
            let ttl = r.ttl_ms;
            let (record, token) = self
                .change(move |s, now| {
                    let expires = (ttl > 0).then(|| now.saturating_add(ttl));
                    s.issue_token(&r.principal, &r.description, expires, now)
                })
                .await?;
            // The id is public; the token itself never goes to a log.
            tracing::info!(principal = %record.principal, token_id = %record.id, by = %current().name(), "token issued");
            Ok(pb::CreateTokenResponse { info: Some(token_info(record)), token })
        })
        .await
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let r = req.into_inner();
        unary("RevokeToken", self.deadline(), async {
            let record = self.change(move |s, now| s.revoke_token(&r.id, now)).await?;
            tracing::info!(principal = %record.principal, token_id = %record.id, by = %current().name(), "token revoked");
            Ok(pb::RevokeTokenResponse { info: Some(token_info(record)) })
        })
        .await
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let r = req.into_inner();
        unary("ListTokens", self.deadline(), async {
            let store = self.admin()?;
            let principal = (!r.principal.is_empty()).then_some(r.principal.as_str());
            Ok(pb::ListTokensResponse { tokens: store.tokens(principal).into_iter().map(token_info).collect() })
        })
        .await
    }

    async fn add_grant(&self, req: Request<pb::AddGrantRequest>) -> Result<Response<pb::AddGrantResponse>, Status> {
        let r = req.into_inner();
        unary("AddGrant", self.deadline(), async {
            let grant = grant_of(r.grant)?;
            let logged = grant.clone();
            let added = self.change(move |s, _| s.add_grant(&grant)).await?;
            tracing::info!(principal = %logged.principal, effect = logged.effect.as_str(), action = %logged.action,
                resource = %logged.resource, added, by = %current().name(), "grant added");
            Ok(pb::AddGrantResponse { added })
        })
        .await
    }

    async fn remove_grant(
        &self,
        req: Request<pb::RemoveGrantRequest>,
    ) -> Result<Response<pb::RemoveGrantResponse>, Status> {
        let r = req.into_inner();
        unary("RemoveGrant", self.deadline(), async {
            let grant = grant_of(r.grant)?;
            let logged = grant.clone();
            let removed = self.change(move |s, _| s.remove_grant(&grant)).await?;
            tracing::info!(principal = %logged.principal, effect = logged.effect.as_str(), action = %logged.action,
                resource = %logged.resource, removed, by = %current().name(), "grant removed");
            Ok(pb::RemoveGrantResponse { removed })
        })
        .await
    }

    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let r = req.into_inner();
        unary("ListGrants", self.deadline(), async {
            let store = self.admin()?;
            let principal = (!r.principal.is_empty()).then_some(r.principal.as_str());
            Ok(pb::ListGrantsResponse { grants: store.grants(principal).into_iter().map(grant_to_pb).collect() })
        })
        .await
    }
}
