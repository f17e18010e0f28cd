//! List requests: the filter language (a conjunction of comparisons, AIP-160 style), the
//! order, and opaque keyset page tokens that are bound to the filter and order they came from.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ProfileError;
use crate::store::{ListOrder, ListQuery, SortValue};

pub const DEFAULT_PAGE_SIZE: u64 = 50;
pub const MAX_PAGE_SIZE: u64 = 1000;

/// The page size asked for, defaulted and bounded.
pub fn page_size(requested: i32, field: &str) -> Result<u64, ProfileError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        size if size < 0 => Err(ProfileError::invalid(field, "must not be negative")),
        size => Ok((size as u64).min(MAX_PAGE_SIZE)),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Op(&'static str),
}

fn tokenize(filter: &str) -> Result<Vec<(usize, Token)>, ProfileError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = filter.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c.is_whitespace() {
            index += 1;
        } else if c == '"' {
            let start = index;
            index += 1;
            let mut text = String::new();
            loop {
                match chars.get(index) {
                    None => {
                        return Err(ProfileError::invalid(
                            "filter",
                            format!("unterminated string at {start}"),
                        ));
                    }
                    Some('"') => break,
                    Some('\\') if chars.get(index + 1).is_some() => {
                        text.push(chars[index + 1]);
                        index += 2;
                    }
                    Some(other) => {
                        text.push(*other);
                        index += 1;
                    }
                }
            }
            index += 1;
            tokens.push((start, Token::Text(text)));
        } else if "<>=!".contains(c) {
            let start = index;
            let two: String = chars[index..chars.len().min(index + 2)].iter().collect();
            let op = match two.as_str() {
                ">=" => ">=",
                "<=" => "<=",
                "!=" => "!=",
                _ => match c {
                    '<' => "<",
                    '>' => ">",
                    '=' => "=",
                    _ => {
                        return Err(ProfileError::invalid(
                            "filter",
                            format!("unexpected '{c}' at {start}"),
                        ));
                    }
                },
            };
            index += op.len();
            tokens.push((start, Token::Op(op)));
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' || c == ':' {
            let start = index;
            let mut word = String::new();
            while index < chars.len() && (chars[index].is_alphanumeric() || "_.-:".contains(chars[index])) {
                word.push(chars[index]);
                index += 1;
            }
            tokens.push((start, Token::Word(word)));
        } else {
            return Err(ProfileError::invalid(
                "filter",
                format!("unexpected '{c}' at {index}"),
            ));
        }
    }
    Ok(tokens)
}

fn parse_time(text: &str, position: usize) -> Result<DateTime<Utc>, ProfileError> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| {
            ProfileError::invalid(
                "filter",
                format!("{text:?} at {position} is not an RFC 3339 time"),
            )
        })
}

/// Parses `filter` and `order_by` into a query (without paging).
pub fn parse_list(filter: &str, order_by: &str) -> Result<ListQuery, ProfileError> {
    let mut query = ListQuery::default();
    let tokens = tokenize(filter)?;
    let mut index = 0;
    while index < tokens.len() {
        if index > 0 {
            match &tokens[index] {
                (_, Token::Word(word)) if word.eq_ignore_ascii_case("AND") => index += 1,
                (position, _) => {
                    return Err(ProfileError::invalid(
                        "filter",
                        format!("expected AND at {position}"),
                    ));
                }
            }
        }
        let (Some((position, Token::Word(field))), Some((_, Token::Op(op))), Some((value_position, value))) =
            (tokens.get(index), tokens.get(index + 1), tokens.get(index + 2))
        else {
            let position = tokens.get(index).map_or(filter.len(), |(position, _)| *position);
            return Err(ProfileError::invalid(
                "filter",
                format!("expected `field op value` at {position}"),
            ));
        };
        let value = match value {
            Token::Word(word) | Token::Text(word) => word.clone(),
            Token::Op(_) => {
                return Err(ProfileError::invalid(
                    "filter",
                    format!("expected a value at {value_position}"),
                ));
            }
        };
        let equality_only = |name: &str| -> Result<(), ProfileError> {
            if *op != "=" {
                return Err(ProfileError::invalid(
                    "filter",
                    format!("{name} supports only = (at {position})"),
                ));
            }
            Ok(())
        };
        match field.as_str() {
            "kind" => {
                equality_only("kind")?;
                let kind = value.trim_start_matches("CUSTOMER_KIND_").to_uppercase();
                if crate::domain::CustomerKind::from_stored(&kind).is_none() {
                    return Err(ProfileError::invalid(
                        "filter",
                        format!("{value:?} at {value_position} is not a customer kind"),
                    ));
                }
                query.kind = Some(kind);
            }
            "relationship_level" | "level" => {
                equality_only("relationship_level")?;
                let level = value.trim_start_matches("RELATIONSHIP_LEVEL_").to_uppercase();
                if crate::domain::RelationshipLevel::from_stored(&level).is_none() {
                    return Err(ProfileError::invalid(
                        "filter",
                        format!("{value:?} at {value_position} is not a relationship level"),
                    ));
                }
                query.relationship_level = Some(level);
            }
            "tag" | "tags" => {
                equality_only("tag")?;
                query.tag = Some(value);
            }
            "create_time" => {
                let time = parse_time(&value, *value_position)?;
                match *op {
                    ">" => query.created_after = Some((time, false)),
                    ">=" => query.created_after = Some((time, true)),
                    "<" => query.created_before = Some((time, false)),
                    "<=" => query.created_before = Some((time, true)),
                    _ => {
                        return Err(ProfileError::invalid(
                            "filter",
                            format!("create_time needs <, <=, > or >= (at {position})"),
                        ));
                    }
                }
            }
            other if other.starts_with("attributes.") => {
                equality_only("attributes")?;
                let key = other.trim_start_matches("attributes.");
                crate::domain::validate_attribute_key(key).map_err(|_| {
                    ProfileError::invalid("filter", format!("{key:?} at {position} is not an attribute key"))
                })?;
                query.attributes.push((key.to_owned(), value));
            }
            other => {
                return Err(ProfileError::invalid(
                    "filter",
                    format!(
                        "unknown field {other:?} at {position}; use kind, tag, relationship_level, attributes.<key>, create_time"
                    ),
                ));
            }
        }
        index += 3;
    }
    let mut words = order_by.split_whitespace();
    query.order = match words.next() {
        None | Some("create_time") => ListOrder::CreateTime,
        Some("update_time") => ListOrder::UpdateTime,
        Some("display_name") => ListOrder::DisplayName,
        Some(other) => {
            return Err(ProfileError::invalid(
                "order_by",
                format!("cannot order by {other:?}"),
            ));
        }
    };
    query.descending = match words.next() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => {
            return Err(ProfileError::invalid(
                "order_by",
                format!("expected asc or desc, got {other:?}"),
            ));
        }
    };
    if words.next().is_some() {
        return Err(ProfileError::invalid("order_by", "orders by one field"));
    }
    Ok(query)
}

fn binding(filter: &str, order_by: &str) -> String {
    let digest = Sha256::digest(format!("{filter}\u{1f}{order_by}").as_bytes());
    digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

/// A token for the page after the row with `value` and `id`.
pub fn encode_page_token(filter: &str, order_by: &str, value: &SortValue, id: Uuid) -> String {
    let value = match value {
        SortValue::Time(time) => format!("t{}", time.timestamp_micros()),
        SortValue::Text(text) => format!("s{text}"),
    };
    URL_SAFE_NO_PAD.encode(format!(
        "v1\u{1f}{}\u{1f}{id}\u{1f}{value}",
        binding(filter, order_by)
    ))
}

/// Reads a page token; it must come from the same filter and order.
pub fn decode_page_token(
    token: &str,
    filter: &str,
    order_by: &str,
) -> Result<(SortValue, Uuid), ProfileError> {
    let invalid = || {
        ProfileError::invalid(
            "page_token",
            "is not a token of this list (filter and order_by must not change)",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(4, '\u{1f}');
    let (Some("v1"), Some(bound), Some(id), Some(value)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if bound != binding(filter, order_by) {
        return Err(invalid());
    }
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    let value = match value.split_at_checked(1) {
        Some(("t", micros)) => SortValue::Time(
            micros
                .parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(invalid)?,
        ),
        Some(("s", text)) => SortValue::Text(text.to_owned()),
        _ => return Err(invalid()),
    };
    Ok((value, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_conditions() {
        let query = parse_list(
            r#"kind = BUSINESS AND tag = "vip" AND relationship_level = PARTNERSHIP AND attributes.tier = "gold" AND create_time >= "2026-01-01T00:00:00Z""#,
            "display_name desc",
        )
        .unwrap();
        assert_eq!(query.kind.as_deref(), Some("BUSINESS"));
        assert_eq!(query.tag.as_deref(), Some("vip"));
        assert_eq!(query.relationship_level.as_deref(), Some("PARTNERSHIP"));
        assert_eq!(query.attributes, vec![("tier".to_owned(), "gold".to_owned())]);
        assert!(query.created_after.is_some());
        assert_eq!(query.order, ListOrder::DisplayName);
        assert!(query.descending);
    }

    #[test]
    fn bad_filters_name_the_position() {
        for (filter, needle) in [
            ("kind = ROBOT", "at 7"),
            ("colour = red", "at 0"),
            ("kind = BUSINESS tag = vip", "expected AND at 16"),
            ("tag = \"open", "unterminated"),
            ("create_time > yesterday", "RFC 3339"),
        ] {
            match parse_list(filter, "") {
                Err(ProfileError::InvalidField { field, description }) => {
                    assert_eq!(field, "filter");
                    assert!(description.contains(needle), "{filter}: {description}");
                }
                other => panic!("{filter}: {other:?}"),
            }
        }
        assert!(parse_list("", "price").is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_list() {
        let id = Uuid::now_v7();
        let value = SortValue::Text("ada \u{1f} lovelace".into());
        let token = encode_page_token("tag = vip", "display_name", &value, id);
        assert_eq!(
            decode_page_token(&token, "tag = vip", "display_name").unwrap(),
            (value, id)
        );
        assert!(decode_page_token(&token, "tag = other", "display_name").is_err());
        assert!(decode_page_token("garbage", "", "").is_err());
    }
}
