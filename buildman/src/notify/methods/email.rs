//! `email`: a short plain-text mail to `config.email` through `MAIL_SERVER` (STARTTLS required
//! when `MAIL_USE_TLS`, the default), from `MAIL_DEFAULT_SENDER`.

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use serde_json::Value;

use super::{Ctx, MethodError, config_str};
use crate::notify::payload::summary;

/// Parse `address` as a mailbox.
pub fn mailbox(address: &str) -> Result<Mailbox, MethodError> {
    address
        .trim()
        .parse()
        .map_err(|source| MethodError::Address {
            address: address.to_owned(),
            source,
        })
}

/// The subject and plain-text body of an event's mail.
pub fn message_text(event: &str, data: &Value) -> (String, String) {
    let subject = summary(event, data);
    let mut body = format!("{subject}.\n");
    let field = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("");
    let tags = data
        .get("docker_tags")
        .or_else(|| data.get("updated_tags"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if !field("repository").is_empty() {
        body.push_str(&format!("\nRepository: {}\n", field("repository")));
    }
    if !tags.is_empty() {
        body.push_str(&format!("Tags: {tags}\n"));
    }
    if let Some(commit) = data
        .get("trigger_metadata")
        .and_then(|m| m.get("commit"))
        .and_then(Value::as_str)
    {
        body.push_str(&format!("Commit: {commit}\n"));
    }
    if !field("homepage").is_empty() {
        body.push_str(&format!("\n{}\n", field("homepage")));
    }
    body.push_str("\n-- \nSent by Quarry for a repository notification.\n");
    (subject, body)
}

/// Send the mail of `event` to `config.email`.
pub async fn send(ctx: &Ctx, config: &Value, event: &str, data: &Value) -> Result<(), MethodError> {
    let mail = ctx
        .config
        .mail
        .as_ref()
        .ok_or(MethodError::MailNotConfigured)?;
    let to = mailbox(config_str(config, "email")?)?;
    let from = mailbox(mail.sender.as_deref().unwrap_or(&ctx.default_sender))?;
    let (subject, body) = message_text(event, data);
    let message = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(MethodError::Message)?;
    let smtp_error = |source| MethodError::Smtp {
        server: mail.server.clone(),
        source,
    };
    let mut builder = if mail.use_tls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&mail.server).map_err(smtp_error)?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&mail.server)
    };
    builder = builder
        .port(mail.port)
        .timeout(Some(ctx.config.send_timeout));
    if let Some((user, password)) = &mail.auth {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    let transport = builder.build();
    transport.send(message).await.map_err(smtp_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mails_summarise_the_event() {
        let (subject, body) = message_text(
            "build_success",
            &json!({"repository": "acme/app", "build_name": "abc1234",
                    "docker_tags": ["latest", "v1"], "homepage": "https://q/x",
                    "trigger_metadata": {"commit": "abc1234def"}}),
        );
        assert_eq!(subject, "Build abc1234 for acme/app completed");
        assert!(body.contains("Tags: latest, v1\n"), "{body}");
        assert!(body.contains("Commit: abc1234def\n"), "{body}");
        assert!(body.contains("https://q/x"), "{body}");
        assert!(mailbox("not an address").is_err());
        assert!(mailbox("ops@example.com").is_ok());
    }
}
