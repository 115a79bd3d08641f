//! What the pass-through reads from the bytes it forwards: the route of a path, the task a
//! request body names, and the token counts of an answer (the engine's `usage` where it sends
//! one, else an estimate). Pure: byte strings in, values out; nothing here touches a socket,
//! so each rule is tested on literal bodies.
//!
//! What it deliberately does not do: change a byte. The proxy forwards what it read; this
//! module only looks.

use serde::Deserialize;

/// The label of requests that name no governed profile (any path outside `/p/<profile>/`).
pub const UNATTRIBUTED: &str = "(unattributed)";

/// What the first user message of a Hermes kanban worker says (`hermes_cli/kanban_db.py`:
/// `prompt = f"work kanban task {task.id}"`, passed as `hermes chat -q`). The background title
/// request of Hermes ≥ 0.20 quotes the same message (`agent/title_generator.py`:
/// `"User: {first user message}"`), so the marker is searched, not matched at the start.
pub const TASK_MARKER: &str = "work kanban task ";

/// Longest task id read after [`TASK_MARKER`]. Hermes ids are `t_` + 8 hex digits; the
/// bound keeps a hostile body from making an unbounded label.
const MAX_TASK_ID: usize = 64;

/// Where a path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/p/<profile><rest>`: to that profile's engine, as `<rest>` (which starts with `/`).
    Profile {
        /// The profile named in the path.
        profile: &'a str,
        /// The path to ask the engine for (query included when the caller passes one).
        rest: &'a str,
    },
    /// Any other path: to the default engine as is.
    Unattributed,
}

/// The route of `path_and_query`. `/p/coder/v1/chat/completions` is the profile `coder` and
/// the rest `/v1/chat/completions`; `/p/coder` alone is `coder` and `/`.
pub fn route(path_and_query: &str) -> Route<'_> {
    let Some(after) = path_and_query.strip_prefix("/p/") else {
        return Route::Unattributed;
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    let (profile, rest) = after.split_at(end);
    if profile.is_empty() {
        return Route::Unattributed;
    }
    let rest = if rest.is_empty() || rest.starts_with('?') {
        // `/p/coder?x` asks for the engine's root; keep the query.
        if rest.is_empty() { "/" } else { rest }
    } else {
        rest
    };
    Route::Profile { profile, rest }
}

/// The parts of an OpenAI-compatible request the proxy reads.
#[derive(Debug, Default, Deserialize)]
struct RequestBody {
    #[serde(default)]
    messages: Vec<Message>,
    /// The legacy completions API: the prompt as a string.
    #[serde(default)]
    prompt: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<serde_json::Value>,
}

/// The task a request body names: the id after [`TASK_MARKER`] in its first user message
/// (text, or the text parts of a multi-part message), else in a completions `prompt`.
/// `None` for anything else (a body that is not JSON, a chat of the gateway's own, a context
/// compressed so far that its first user turn is a summary).
pub fn task_of(body: &[u8]) -> Option<String> {
    // Cheap refusal first: most bodies that name no task are not parsed at all.
    memfind(body, TASK_MARKER.as_bytes())?;
    let req: RequestBody = serde_json::from_slice(body).ok()?;
    if let Some(first_user) = req.messages.iter().find(|m| m.role == "user") {
        return first_user.content.as_ref().and_then(task_in_content);
    }
    req.prompt.as_ref().and_then(task_in_content)
}

fn task_in_content(content: &serde_json::Value) -> Option<String> {
    match content {
        serde_json::Value::String(s) => task_in_text(s),
        serde_json::Value::Array(parts) => parts.iter().find_map(|p| match p {
            serde_json::Value::String(s) => task_in_text(s),
            other => other
                .get("text")
                .and_then(serde_json::Value::as_str)
                .and_then(task_in_text),
        }),
        _ => None,
    }
}

/// The id after [`TASK_MARKER`] in `text`: the letters, digits, `_` and `-` that follow.
pub fn task_in_text(text: &str) -> Option<String> {
    let at = text.find(TASK_MARKER)? + TASK_MARKER.len();
    let id: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(MAX_TASK_ID)
        .collect();
    (!id.is_empty()).then_some(id)
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tokens {
    /// Prompt tokens.
    pub prompt: u64,
    /// Generated tokens.
    pub generated: u64,
}

/// Estimated tokens in `bytes` of text: one per 4 bytes, rounded up (the usual rule of thumb
/// for English and code with BPE vocabularies; it errs high on JSON, which is the safe side
/// for a memory charge).
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// The `usage` object of an OpenAI-compatible answer or stream chunk, when it has one.
fn usage_of(v: &serde_json::Value) -> Option<Tokens> {
    let u = v.get("usage")?;
    Some(Tokens {
        prompt: u.get("prompt_tokens")?.as_u64()?,
        generated: u
            .get("completion_tokens")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0),
    })
}

/// Bytes of generated text in an answer (`choices[].message`) or a chunk (`choices[].delta`):
/// content, reasoning and tool-call arguments; `choices[].text` for the completions API.
fn generated_bytes(v: &serde_json::Value) -> usize {
    let Some(choices) = v.get("choices").and_then(serde_json::Value::as_array) else {
        return 0;
    };
    let mut n = 0;
    for c in choices {
        if let Some(t) = c.get("text").and_then(serde_json::Value::as_str) {
            n += t.len();
        }
        for part in ["message", "delta"] {
            let Some(m) = c.get(part) else { continue };
            for field in ["content", "reasoning_content", "reasoning"] {
                if let Some(t) = m.get(field).and_then(serde_json::Value::as_str) {
                    n += t.len();
                }
            }
            if let Some(calls) = m.get("tool_calls").and_then(serde_json::Value::as_array) {
                for call in calls {
                    if let Some(a) = call
                        .pointer("/function/arguments")
                        .and_then(serde_json::Value::as_str)
                    {
                        n += a.len();
                    }
                }
            }
        }
    }
    n
}

/// The most of one SSE line kept while looking for its end; a longer line is skipped (its
/// text is not counted) so a stream that never sends a newline cannot grow our memory.
pub const MAX_SSE_LINE: usize = 1024 * 1024;
/// The most of a non-streaming answer copied to read its `usage` at the end; a longer answer
/// is forwarded whole but counted by estimate.
pub const MAX_JSON_COPY: usize = 1024 * 1024;

/// Reads an answer as its bytes pass: a server-sent-event stream line by line (each `data:`
/// chunk parsed for generated text and `usage`), or a JSON answer copied up to
/// [`MAX_JSON_COPY`] and parsed at the end. Memory is bounded by those two constants.
#[derive(Debug)]
pub struct AnswerReader {
    sse: bool,
    buf: Vec<u8>,
    /// In SSE mode: the current line was too long and is being skipped to its end.
    skipping: bool,
    /// In JSON mode: the answer outgrew the copy.
    overflowed: bool,
    generated_bytes: usize,
    usage: Option<Tokens>,
    /// Every byte of the answer, for the estimate when nothing else can be read.
    total_bytes: usize,
    /// In SSE mode: the `data: [DONE]` event passed (the answer is complete; what follows
    /// is the end of the HTTP body).
    done: bool,
}

impl AnswerReader {
    /// A reader for an answer whose `Content-Type` is `content_type`.
    pub fn new(content_type: Option<&str>) -> AnswerReader {
        let sse = content_type.is_some_and(|c| c.trim_start().starts_with("text/event-stream"));
        AnswerReader {
            sse,
            buf: Vec::new(),
            skipping: false,
            overflowed: false,
            generated_bytes: 0,
            usage: None,
            total_bytes: 0,
            done: false,
        }
    }

    /// The stream's `data: [DONE]` passed: its tokens are all known. A client may close its
    /// connection as soon as it reads it (the OpenAI SDK does), before the body's end.
    pub fn saw_done(&self) -> bool {
        self.done
    }

    /// The next bytes of the answer.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.total_bytes += chunk.len();
        if !self.sse {
            if self.buf.len() + chunk.len() > MAX_JSON_COPY {
                self.overflowed = true;
                self.buf = Vec::new();
            }
            if !self.overflowed {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            if !self.skipping {
                self.buf.extend_from_slice(&chunk[..nl]);
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
                self.buf = line;
                self.buf.clear();
            }
            self.skipping = false;
            chunk = &chunk[nl + 1..];
        }
        if !self.skipping {
            if self.buf.len() + chunk.len() > MAX_SSE_LINE {
                self.skipping = true;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
    }

    fn line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        if data.is_empty() {
            return;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
            return;
        };
        self.generated_bytes += generated_bytes(&v);
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
        }
    }

    /// Generated tokens so far, by estimate (for a task's running total while it streams).
    pub fn generated_so_far(&self) -> u64 {
        estimate_tokens(self.generated_bytes)
    }

    /// The answer is complete: the engine's `usage` when it sent one (exact), else `None`
    /// and the generated-token estimate.
    pub fn finish(&mut self) -> (Option<Tokens>, u64) {
        if self.sse {
            // A last event without a trailing newline.
            if !self.skipping && !self.buf.is_empty() {
                let line = std::mem::take(&mut self.buf);
                self.line(&line);
            }
            return (self.usage, estimate_tokens(self.generated_bytes));
        }
        if self.overflowed {
            return (None, estimate_tokens(self.total_bytes));
        }
        match serde_json::from_slice::<serde_json::Value>(&self.buf) {
            Ok(v) => (usage_of(&v), estimate_tokens(generated_bytes(&v))),
            Err(_) => (None, estimate_tokens(self.total_bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_path_routes_to_its_rest_and_anything_else_is_unattributed() {
        assert_eq!(
            route("/p/coder/v1/chat/completions"),
            Route::Profile {
                profile: "coder",
                rest: "/v1/chat/completions"
            }
        );
        assert_eq!(
            route("/p/coder/v1/models?x=1"),
            Route::Profile {
                profile: "coder",
                rest: "/v1/models?x=1"
            }
        );
        assert_eq!(
            route("/p/coder"),
            Route::Profile {
                profile: "coder",
                rest: "/"
            }
        );
        assert_eq!(route("/v1/chat/completions"), Route::Unattributed);
        assert_eq!(route("/p//v1"), Route::Unattributed);
        assert_eq!(route("/pp/x"), Route::Unattributed);
    }

    #[test]
    fn the_task_is_read_from_the_first_user_message_only() {
        let worker = br#"{"model":"m","messages":[{"role":"system","content":"You work kanban task t_sys"},{"role":"user","content":"work kanban task t_1a2b3c4d"},{"role":"user","content":"work kanban task t_other"}]}"#;
        assert_eq!(task_of(worker).as_deref(), Some("t_1a2b3c4d"));
        // Hermes >= 0.20's title request quotes the first message.
        let title = br#"{"messages":[{"role":"system","content":"Write a title"},{"role":"user","content":"User: work kanban task t_9\n\nAssistant: ok"}]}"#;
        assert_eq!(task_of(title).as_deref(), Some("t_9"));
        // Multi-part content (an image attached to the first turn).
        let parts = br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"work kanban task t_img"}]}]}"#;
        assert_eq!(task_of(parts).as_deref(), Some("t_img"));
        // The first user message names no task: a later one does not count.
        let gateway = br#"{"messages":[{"role":"user","content":"hello"},{"role":"user","content":"work kanban task t_late"}]}"#;
        assert_eq!(task_of(gateway), None);
        assert_eq!(task_of(b"not json work kanban task t_1"), None);
        assert_eq!(task_of(br#"{"messages":[]}"#), None);
        assert_eq!(
            task_of(br#"{"prompt":"work kanban task t_c"}"#).as_deref(),
            Some("t_c")
        );
        assert_eq!(task_in_text("work kanban task "), None);
        assert_eq!(
            task_in_text(&format!("work kanban task {}", "a".repeat(500))).map(|s| s.len()),
            Some(64)
        );
    }

    #[test]
    fn usage_in_a_json_answer_is_exact() {
        let mut r = AnswerReader::new(Some("application/json"));
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hello world!"}}],"usage":{"prompt_tokens":17,"completion_tokens":3,"total_tokens":20}}"#;
        for c in body.chunks(7) {
            r.feed(c);
        }
        assert_eq!(
            r.finish(),
            (
                Some(Tokens {
                    prompt: 17,
                    generated: 3
                }),
                3
            )
        );
    }

    #[test]
    fn an_sse_stream_is_read_across_chunk_boundaries_with_its_usage_chunk() {
        let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"abcd\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"efgh\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";
        for size in 1..40 {
            let mut r = AnswerReader::new(Some("text/event-stream; charset=utf-8"));
            for c in stream.as_bytes().chunks(size) {
                r.feed(c);
            }
            assert_eq!(r.generated_so_far(), 2);
            assert_eq!(
                r.finish(),
                (
                    Some(Tokens {
                        prompt: 100,
                        generated: 2
                    }),
                    2
                ),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_stream_without_usage_is_estimated_and_a_huge_line_is_skipped_not_kept() {
        let mut r = AnswerReader::new(Some("text/event-stream"));
        r.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"12345678\"}}]}\n");
        r.feed(&vec![b'x'; MAX_SSE_LINE + 10]);
        assert!(r.buf.is_empty());
        r.feed(b"yyy\ndata: {\"choices\":[{\"delta\":{\"content\":\"1\"}}]}\n");
        assert_eq!(r.finish(), (None, 3));
    }

    #[test]
    fn a_json_answer_larger_than_the_copy_is_estimated_from_its_size() {
        let mut r = AnswerReader::new(Some("application/json"));
        r.feed(&vec![b' '; MAX_JSON_COPY]);
        r.feed(b"{}");
        assert!(r.buf.is_empty());
        assert_eq!(r.finish(), (None, estimate_tokens(MAX_JSON_COPY + 2)));
    }
}
