//! Where a process sits in systemd's tree, from its `/proc/PID/cgroup` text:
//! its unit and slice, and the sandboxed app it belongs to (a Flatpak app id
//! from `app-flatpak-<id>-<n>.scope`, a snap name from `snap.<name>.*`).
//!
//! Both hierarchies are read: the unified (`0::`) line, and the legacy
//! `name=systemd` line where the unified one is empty (hybrid and legacy
//! setups). Path components are unescaped as systemd escapes them: a leading
//! `_` added to names that collide with the kernel's, and `\xNN` in unit names.

/// A sandboxed application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum App {
    Flatpak(String),
    Snap(String),
}

impl App {
    /// `flatpak:<id>` or `snap:<name>`: how it is shown and matched.
    pub fn label(&self) -> String {
        match self {
            App::Flatpak(id) => format!("flatpak:{id}"),
            App::Snap(name) => format!("snap:{name}"),
        }
    }
}

/// A process's place in the unit tree; all parts are None outside systemd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The innermost service or scope (`session-2.scope`, `app-flatpak-….scope`, `foo.service`).
    pub unit: Option<String>,
    /// The innermost slice above that unit (`app.slice`, `background.slice`, `system.slice`).
    pub slice: Option<String>,
    pub app: Option<App>,
}

/// The cgroup path of the process, unified hierarchy first.
fn systemd_path(text: &str) -> Option<&str> {
    let mut legacy = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() && path != "/" {
            return Some(path);
        }
        if controllers.split(',').any(|c| c == "name=systemd") {
            legacy = Some(path);
        }
    }
    legacy
}

/// systemd's unit-name unescaping (`\x2d` → `-`); malformed escapes stay as they are.
fn unescape(name: &str) -> String {
    let name = name.strip_prefix('_').unwrap_or(name);
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(hex) = name.get(i + 2..i + 4)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn app_of(unit: &str) -> Option<App> {
    if let Some(rest) = unit.strip_prefix("app-flatpak-").and_then(|r| r.strip_suffix(".scope")) {
        // `<id>-<n>`: the id is what comes before the last dash, when digits follow it
        let (id, n) = rest.rsplit_once('-')?;
        return (!id.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| App::Flatpak(id.to_string()));
    }
    let rest = unit.strip_prefix("snap.")?;
    let (name, _) = rest.split_once('.')?;
    (!name.is_empty()).then(|| App::Snap(name.to_string()))
}

/// Parses a `/proc/PID/cgroup` text.
pub fn parse(text: &str) -> Placement {
    let Some(path) = systemd_path(text) else { return Placement::default() };
    let (mut unit, mut slice, mut last_slice) = (None, None, None);
    for part in path.split('/').filter(|p| !p.is_empty()).map(unescape) {
        if part.ends_with(".slice") {
            last_slice = Some(part);
        } else if part.ends_with(".service") || part.ends_with(".scope") {
            slice = last_slice.clone();
            unit = Some(part);
        }
    }
    let app = unit.as_deref().and_then(app_of);
    Placement { unit, slice, app }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(unit: &str, slice: &str, app: Option<App>) -> Placement {
        Placement { unit: Some(unit.into()), slice: Some(slice.into()), app }
    }

    #[test]
    fn unified_hierarchy() {
        let t = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.gnome.Maps-12345.scope\n";
        assert_eq!(
            parse(t),
            p("app-flatpak-org.gnome.Maps-12345.scope", "app.slice", Some(App::Flatpak("org.gnome.Maps".into())))
        );
        assert_eq!(
            parse("0::/system.slice/foo.service/payload\n"),
            p("foo.service", "system.slice", None),
            "cgroups inside a unit are not units"
        );
        assert_eq!(
            parse("0::/user.slice/user-1000.slice/session-2.scope\n"),
            p("session-2.scope", "user-1000.slice", None)
        );
        assert_eq!(
            parse("0::/user.slice/user-1000.slice/user@1000.service/background.slice/indexer.service\n"),
            p("indexer.service", "background.slice", None)
        );
    }

    #[test]
    fn legacy_and_hybrid_hierarchies() {
        // hybrid: the unified line is empty ("/"), systemd's own tree is name=systemd
        let hybrid = "12:memory:/user.slice\n1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n0::/\n";
        assert_eq!(parse(hybrid), p("session-3.scope", "user-1000.slice", None));
        let legacy = "3:cpu,cpuacct:/\n1:name=systemd:/system.slice/snap.lxd.daemon.service\n";
        assert_eq!(parse(legacy), p("snap.lxd.daemon.service", "system.slice", Some(App::Snap("lxd".into()))));
    }

    #[test]
    fn escaped_names() {
        // a dash inside a unit-name component is \x2d; names colliding with the kernel's get `_`
        let t = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-my\\x2deditor-77.scope\n";
        assert_eq!(parse(t).unit.as_deref(), Some("app-gnome-my-editor-77.scope"));
        assert_eq!(parse("0::/system.slice/_cpu.service\n").unit.as_deref(), Some("cpu.service"));
        assert_eq!(unescape("bad\\xZZ\\x"), "bad\\xZZ\\x", "malformed escapes are kept");
    }

    #[test]
    fn snaps_and_not_apps() {
        let t = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/snap.firefox.firefox-0a1b2c.scope\n";
        assert_eq!(parse(t).app, Some(App::Snap("firefox".into())));
        assert_eq!(parse("0::/user.slice/user-0.slice/app-flatpak-.scope\n").app, None);
        assert_eq!(parse("0::/user.slice/user-0.slice/app-flatpak-org.x-abc.scope\n").app, None);
    }

    #[test]
    fn outside_systemd() {
        assert_eq!(parse(""), Placement::default());
        assert_eq!(parse("0::/\n"), Placement::default());
        assert_eq!(parse("0::/docker/3f2a\n"), Placement::default());
        assert_eq!(parse("garbage without colons\n::\n"), Placement::default());
    }
}
