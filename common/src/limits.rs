//! Size limits every role enforces. docs/limits.md repeats them for users.

/// Longest task id, in bytes.
pub const MAX_TASK_ID_LEN: usize = 128;
/// Longest node group name, in bytes.
pub const MAX_NODE_GROUP_LEN: usize = 64;
/// Most entries in a job's params.
pub const MAX_PARAMS: usize = 64;
/// Most bytes of params keys and values together.
pub const MAX_PARAMS_BYTES: usize = 16 * 1024;
/// Most bytes of a job's payload.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Most jobs in one submit.
pub const MAX_BATCH: usize = 10_000;
/// Most steps in a retry plan.
pub const MAX_RETRY_STEPS: usize = 32;
/// Longest timeout a job may ask for: 7 days.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Longest delay a retry step or `later` outcome may ask for: 365 days.
pub const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;
/// Most slots one TaskTracker may offer.
pub const MAX_SLOTS: u32 = 10_000;

/// Most assignments not yet due a TaskTracker holds at once (its
/// `--ahead-slots`).
pub const MAX_AHEAD_SLOTS: u32 = 100_000;
/// Largest gRPC message any role accepts (a submit batch of large payloads).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Longest message kept from an outcome or a biz log line, in bytes; longer
/// ones are cut.
pub const MAX_LOG_MESSAGE_BYTES: usize = 8 * 1024;

/// Longest job id or feedback id a peer may send, in bytes (the tracker's
/// own ids are 32).
pub const MAX_JOB_ID_LEN: usize = 128;
/// Longest TaskTracker identity or JobClient id, in bytes.
pub const MAX_IDENTITY_LEN: usize = 256;
/// Most runs, outcome reports or log lines in one message from a
/// TaskTracker, and most ids in one feedback ack.
pub const MAX_ITEMS_PER_MESSAGE: usize = 10_000;

/// Checks the length of an id a peer sent: at most `limit` bytes. The
/// error names the field and the limit, and never repeats the value.
pub fn check_len(field: &str, value: &str, limit: usize) -> Result<(), String> {
    if value.len() > limit {
        return Err(format!(
            "{field}: is {} bytes long, the limit is {limit}",
            value.len()
        ));
    }
    Ok(())
}

/// Checks how many items one message carries.
pub fn check_count(field: &str, n: usize, limit: usize) -> Result<(), String> {
    if n > limit {
        return Err(format!("{field}: holds {n} items, the limit is {limit}"));
    }
    Ok(())
}

/// Checks a node group name: 1..=64 characters from `[A-Za-z0-9_.-]`.
pub fn check_node_group(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_NODE_GROUP_LEN {
        return Err(format!(
            "is {} bytes long, the limit is {MAX_NODE_GROUP_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "has the character {c:?}; allowed are A-Z a-z 0-9 _ . -"
        ));
    }
    Ok(())
}

/// Checks a task id: 1..=128 bytes of printable ASCII without spaces.
pub fn check_task_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.len() > MAX_TASK_ID_LEN {
        return Err(format!(
            "is {} bytes long, the limit is {MAX_TASK_ID_LEN}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "has the character {c:?}; allowed is printable ASCII without spaces"
        ));
    }
    Ok(())
}

/// Cuts a message to [`MAX_LOG_MESSAGE_BYTES`] on a character boundary.
pub fn clip_message(mut s: String) -> String {
    if s.len() > MAX_LOG_MESSAGE_BYTES {
        let mut cut = MAX_LOG_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" [cut]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_group_names() {
        assert!(check_node_group("workers-1.eu_west").is_ok());
        assert!(check_node_group("").unwrap_err().contains("empty"));
        assert!(check_node_group("a b").unwrap_err().contains("' '"));
        assert!(check_node_group(&"x".repeat(65))
            .unwrap_err()
            .contains("65"));
    }

    #[test]
    fn lengths_name_the_field_and_the_limit_not_the_value() {
        assert!(check_len("lines[0].job_id", "abc", MAX_JOB_ID_LEN).is_ok());
        let long = "x".repeat(50 * 1024 * 1024);
        let e = check_len("lines[0].job_id", &long, MAX_JOB_ID_LEN).unwrap_err();
        assert!(e.starts_with("lines[0].job_id"), "{e}");
        assert!(e.contains("128") && e.len() < 200, "{e}");
        assert!(check_count("reports", 10_001, MAX_ITEMS_PER_MESSAGE).is_err());
    }

    #[test]
    fn task_ids() {
        assert!(check_task_id("order:42/retry#1").is_ok());
        assert!(check_task_id("").is_err());
        assert!(check_task_id("has space").is_err());
        assert!(check_task_id(&"x".repeat(129)).unwrap_err().contains("129"));
    }

    #[test]
    fn clips_long_messages_on_char_boundaries() {
        let s = "é".repeat(MAX_LOG_MESSAGE_BYTES);
        let clipped = clip_message(s);
        assert!(clipped.len() <= MAX_LOG_MESSAGE_BYTES + 6);
        assert!(clipped.ends_with("[cut]"));
    }
}
