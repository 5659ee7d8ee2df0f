//! Outgoing email: SMTP when configured, otherwise one `.eml` file per event
//! in `<data_dir>/emails`, named by the event id. A file is written under a
//! temporary name and renamed, so a redelivered event replaces its own file
//! and never yields a second one or a torn one.

use std::path::PathBuf;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::SmtpConfig;

/// A failed send.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// A bad address or message.
    #[error("message: {0}")]
    Message(String),
    /// The SMTP server refused or was unreachable (lettre's error says which).
    #[error("smtp: {0}")]
    Smtp(#[source] lettre::transport::smtp::Error),
    /// Writing the `.eml` file failed.
    #[error("write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Where emails go.
#[derive(Clone)]
pub enum Mailer {
    /// `.eml` files in this directory.
    Files(PathBuf),
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Files(dir) => f.debug_tuple("Files").field(dir).finish(),
            Mailer::Smtp(_) => f.write_str("Smtp"),
        }
    }
}

impl Mailer {
    /// SMTP if `smtp.host` is set, else files under `dir`.
    pub fn new(smtp: &SmtpConfig, dir: PathBuf) -> Result<Self, EmailError> {
        let Some(host) = &smtp.host else { return Ok(Mailer::Files(dir)) };
        let builder = if smtp.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(EmailError::Smtp)?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        };
        let mut builder = builder.port(smtp.port);
        if let Some(user) = &smtp.username {
            let password = smtp.password.as_ref().map(|p| p.expose().to_string()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Mailer::Smtp(builder.build()))
    }

    /// Sends a plain-text message for event `event_id`. Its Message-ID is
    /// derived from the event id, so a message sent again for the same
    /// event (see `consumers` on crashes) can be recognised by the receiver.
    pub async fn send(
        &self,
        event_id: &str,
        from: &str,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), EmailError> {
        let mailbox = |a: &str| a.parse::<Mailbox>().map_err(|e| EmailError::Message(format!("address {a:?}: {e}")));
        let message = Message::builder()
            .from(mailbox(from)?)
            .to(mailbox(to)?)
            .subject(subject)
            .message_id(Some(format!("<{}@order-service>", sanitize(event_id))))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| EmailError::Message(e.to_string()))?;
        match self {
            Mailer::Smtp(t) => {
                t.send(message).await.map_err(EmailError::Smtp)?;
                Ok(())
            }
            Mailer::Files(dir) => {
                let bytes = message.formatted();
                let dir = dir.clone();
                let name = sanitize(event_id);
                tokio::task::spawn_blocking(move || write_eml(&dir, &name, &bytes))
                    .await
                    .map_err(|e| EmailError::Message(format!("writer task: {e}")))?
            }
        }
    }
}

/// Keeps ids usable as file names.
fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn write_eml(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), EmailError> {
    use std::io::Write;
    let io = |path: PathBuf| move |source| EmailError::Io { path, source };
    std::fs::create_dir_all(dir).map_err(io(dir.to_path_buf()))?;
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    let path = dir.join(format!("{name}.eml"));
    let mut f = std::fs::File::create(&tmp).map_err(io(tmp.clone()))?;
    f.write_all(bytes).map_err(io(tmp.clone()))?;
    f.sync_all().map_err(io(tmp.clone()))?;
    std::fs::rename(&tmp, &path).map_err(io(path.clone()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_same_event_yields_one_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Mailer::new(&SmtpConfig::default(), dir.path().to_path_buf()).expect("mailer");
        for _ in 0..2 {
            m.send("ev-1", "a@example.com", "b@example.com", "New cake order", "hello".into()).await.expect("send");
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(dir.path().join("ev-1.eml")).expect("eml");
        assert!(text.contains("Subject: New cake order"), "{text}");
        assert!(text.contains("To: b@example.com"), "{text}");
        assert!(text.contains("Message-ID: <ev-1@order-service>"), "{text}");
    }
}
