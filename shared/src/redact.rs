//! Secrets out of URLs before they reach a log line or an error (SPEC §9): `DATABASE_URL` and
//! `NATS_URL` may carry a password or a token.

/// What replaces a secret.
const HIDDEN: &str = "***";

/// `urls` (one URL, or a comma-separated list as in `NATS_URL`) with every password, NATS token
/// (`nats://token@host`) and `password=` query parameter replaced by `***`. Works on text that is
/// not a valid URL too, so that it can be used in the error saying so.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => (&url[..at + 3], &url[at + 3..]),
        None => ("", url),
    };
    // The userinfo ends at the last '@' before the query: an unescaped '@' or '/' in a password
    // must not leave part of it visible.
    let query_at = rest.find(['?', '#']).unwrap_or(rest.len());
    let (userinfo, rest) = match rest[..query_at].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let authority = match userinfo {
        Some(userinfo) => match userinfo.find(':') {
            Some(colon) => format!("{}:{HIDDEN}", &userinfo[..colon]),
            // A user alone is a name for PostgreSQL, a token for NATS.
            None if is_nats(scheme) => HIDDEN.to_owned(),
            None => userinfo.to_owned(),
        },
        None => String::new(),
    };
    format!("{scheme}{authority}{}", redact_query(rest))
}

fn is_nats(scheme: &str) -> bool {
    let scheme = scheme.trim_end_matches("://").trim().to_ascii_lowercase();
    matches!(scheme.as_str(), "" | "nats" | "tls" | "ws" | "wss")
}

/// `password=…` and `sslpassword=…` parameters of the query.
fn redact_query(tail: &str) -> String {
    let Some(at) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(at + 1);
    let (query, fragment) = match query.find('#') {
        Some(hash) => query.split_at(hash),
        None => (query, ""),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.to_ascii_lowercase().ends_with("password") => {
                format!("{key}={HIDDEN}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/smart_support?sslmode=require"),
            "postgres://app:***@db:5432/smart_support?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app@db/x?sslmode=require&password=s3cret"),
            "postgres://app@db/x?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("nats://u:p%40ss@a:4222, tls://u:p%40ss@b:4222"),
            "nats://u:***@a:4222, tls://u:***@b:4222"
        );
        // A password holding '@' or '/' characters that were not escaped.
        assert_eq!(
            redact_url("postgres://app:s3@c/ret@db/x?options=a@b"),
            "postgres://app:***@db/x?options=a@b"
        );
    }

    #[test]
    fn nats_tokens_are_hidden_and_postgres_users_kept() {
        assert_eq!(redact_url("nats://t0ken@a:4222"), "nats://***@a:4222");
        assert_eq!(redact_url("t0ken@a:4222"), "***@a:4222");
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/db"),
            "postgres://postgres@127.0.0.1:5432/db"
        );
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "nats://127.0.0.1:4222",
            "nats://a:4222,nats://b:4222",
            "postgres://127.0.0.1/db?sslmode=verify-full#x",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
