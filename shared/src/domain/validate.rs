//! Input checks that need the configured limits. Serde already rejected wrong types, unknown
//! fields, bad e-mails, roles and group types.

use crate::{
    config::Limits,
    domain::model::{Attachment, PostMessage},
    error::DomainError,
};

fn chars(s: &str) -> usize {
    s.chars().count()
}

pub fn name(limits: &Limits, raw: &str) -> Result<String, DomainError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(DomainError::invalid("name must not be empty"));
    }
    if chars(value) > limits.max_name_chars as usize {
        return Err(DomainError::invalid(format!(
            "name is longer than {} characters",
            limits.max_name_chars
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(DomainError::invalid("name must not contain control characters"));
    }
    Ok(value.to_owned())
}

pub fn description(limits: &Limits, raw: &str) -> Result<String, DomainError> {
    if chars(raw) > limits.max_description_chars as usize {
        return Err(DomainError::invalid(format!(
            "description is longer than {} characters",
            limits.max_description_chars
        )));
    }
    if raw.contains('\0') {
        return Err(DomainError::invalid("description must not contain NUL characters"));
    }
    Ok(raw.trim().to_owned())
}

pub fn page(raw: Option<&str>) -> Result<Option<String>, DomainError> {
    match raw.map(str::trim) {
        None => Ok(None),
        Some("") => Err(DomainError::invalid("page must not be empty (send null to detach)")),
        Some(p) if chars(p) > 200 => Err(DomainError::invalid("page is longer than 200 characters")),
        Some(p) if p.chars().any(char::is_control) => {
            Err(DomainError::invalid("page must not contain control characters"))
        }
        Some(p) => Ok(Some(p.to_owned())),
    }
}

/// Checks a message body; returns the content type to store.
pub fn message(limits: &Limits, input: &PostMessage) -> Result<String, DomainError> {
    if input.content.trim().is_empty() && input.attachments.is_empty() {
        return Err(DomainError::invalid("content must not be empty"));
    }
    if chars(&input.content) > limits.max_content_chars as usize {
        return Err(DomainError::invalid(format!(
            "content is longer than {} characters",
            limits.max_content_chars
        )));
    }
    // Postgres text cannot hold NUL; refusing it here keeps it a 400 on both backends.
    if input.content.contains('\0') {
        return Err(DomainError::invalid("content must not contain NUL characters"));
    }
    let content_type = input.content_type.as_deref().unwrap_or("text");
    if !limits.content_types.iter().any(|t| t == content_type) {
        return Err(DomainError::invalid(format!(
            "contentType '{content_type}' is not one of: {}",
            limits.content_types.join(", ")
        )));
    }
    if input.attachments.len() > limits.max_attachments as usize {
        return Err(DomainError::invalid(format!(
            "more than {} attachments",
            limits.max_attachments
        )));
    }
    input.attachments.iter().try_for_each(attachment)?;
    if let Some(id) = &input.client_message_id
        && (id.trim().is_empty() || chars(id) > 128 || id.chars().any(char::is_control))
    {
        return Err(DomainError::invalid(
            "clientMessageId must be 1 to 128 printable characters",
        ));
    }
    Ok(content_type.to_owned())
}

fn attachment(a: &Attachment) -> Result<(), DomainError> {
    if a.url.trim().is_empty() || chars(&a.url) > 2048 {
        return Err(DomainError::invalid("attachment url must be 1 to 2048 characters"));
    }
    let too_long = |v: &Option<String>| v.as_ref().is_some_and(|s| chars(s) > 255);
    if too_long(&a.name) || too_long(&a.mime_type) {
        return Err(DomainError::invalid(
            "attachment name and mimeType are at most 255 characters",
        ));
    }
    Ok(())
}

/// `limit` of a list or history read.
pub fn limit(raw: Option<u64>, default: u64, max: u64) -> Result<u64, DomainError> {
    match raw {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(DomainError::invalid(format!("limit must be between 1 and {max}"))),
    }
}
