//! Chat templates: a model's Jinja template (from its own files, so untrusted)
//! rendered with minijinja the way Hugging Face's `apply_chat_template` does
//! (Python string methods through minijinja-contrib, `raise_exception`,
//! `strftime_now`, `tojson`). Rendering is bounded: a template gets [`FUEL`]
//! instructions and may produce [`MAX_OUTPUT`] bytes; one that loops or grows
//! without end fails with a reason instead of holding a worker or the memory.

use serde_json::Value;

/// Instructions a rendering may run: a chat template takes tens per message; this allows
/// conversations of many thousands of messages and stops runaway loops within a second.
pub const FUEL: u64 = 20_000_000;
/// Bytes a rendering may produce (a prompt is bounded by the context anyway).
pub const MAX_OUTPUT: usize = 64 << 20;

/// What a template is rendered with.
pub struct Inputs<'a> {
    /// Messages as Hugging Face templates take them (`role`, `content`, `tool_calls`, …).
    pub messages: &'a [Value],
    /// The offered tools (`[{"type": "function", "function": {…}}]`), if any.
    pub tools: Option<Value>,
    pub bos_token: &'a str,
    pub eos_token: &'a str,
}

/// The local time formatted by `strftime(3)`, as Hugging Face's `strftime_now`.
fn strftime_now(format: String) -> Result<String, minijinja::Error> {
    let bad = || minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, "strftime_now: bad format");
    let fmt = std::ffi::CString::new(format).map_err(|_| bad())?;
    let mut buf = vec![0u8; 256];
    // SAFETY: localtime_r and strftime write into the buffers given, within their sizes.
    let n = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad());
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm)
    };
    buf.truncate(n);
    String::from_utf8(buf).map_err(|_| bad())
}

/// A writer that refuses to grow past [`MAX_OUTPUT`].
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT {
            self.overflowed = true;
            return Err(std::io::Error::other("output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `template` with a generation prompt; the reason when it fails.
pub fn render(template: &str, inputs: &Inputs<'_>) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", strftime_now);
    env.set_fuel(Some(FUEL));
    // No debug info: minijinja's rendering of it (the alternate `{:#}` form of an error)
    // panics on some spans (an underflow in its debug.rs, found by fuzzing: artifacts/
    // template/crash-79ef…); errors are shown by kind, detail and line.
    env.set_debug(false);
    env.add_template("chat", template).map_err(|e| e.to_string())?;
    let ctx = minijinja::context! {
        messages => inputs.messages,
        tools => inputs.tools,
        add_generation_prompt => true,
        bos_token => inputs.bos_token,
        eos_token => inputs.eos_token,
    };
    let t = env.get_template("chat").map_err(|e| e.to_string())?;
    let mut out = Bounded::default();
    match t.render_captured_to(ctx, &mut out) {
        // what the template writes is UTF-8 (it writes strings)
        Ok(_) => Ok(String::from_utf8_lossy(&out.bytes).into_owned()),
        Err(_) if out.overflowed => Err(format!("the template's output passed {MAX_OUTPUT} bytes")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(template: &str) -> Result<String, String> {
        let messages = [serde_json::json!({"role": "user", "content": "Hi"})];
        render(template, &Inputs { messages: &messages, tools: None, bos_token: "<s>", eos_token: "</s>" })
    }

    #[test]
    fn templates_render_as_hugging_face_does() {
        let t = "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content.strip() }}{% endfor %}\
                 {% if add_generation_prompt %}<assistant>{% endif %}";
        assert_eq!(run(t).unwrap(), "<s><user>Hi<assistant>");
        assert!(run("{{ raise_exception('no system role') }}").unwrap_err().contains("no system role"));
        assert!(run("{% for %}").is_err());
    }

    #[test]
    fn runaway_templates_stop() {
        let e = run("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}").unwrap_err();
        assert!(e.contains("fuel"), "{e}");
    }
}
