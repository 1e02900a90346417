//! Finding WinBox and starting it with a login. WinBox 3 and 4 both take
//! `[<connect-to> [<login> [<password>]]]` as positional arguments (`HOST:PORT USER
//! PASSWORD`); WinBox 4 runs natively on Windows (`WinBox.exe`), macOS
//! (`/Applications/WinBox.app`) and Linux (`WinBox`), WinBox 3 (`winbox64.exe`) under
//! Wine outside Windows. Arguments are always passed as a vector, never through a shell.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The operating systems the launcher knows the usual places of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Windows,
    MacOs,
    Linux,
}

impl Os {
    /// The one this build runs on (other Unixes look like Linux).
    pub fn current() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Linux
        }
    }
}

/// Why WinBox could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no WinBox found: install WinBox 4, or name it with --winbox PATH or POSTERN_WINBOX")]
    NotFound,
    #[error("the WinBox program {0} does not exist")]
    Missing(String),
    #[error(
        "{0} is WinBox 3 for Windows and needs Wine, which is not installed (or set POSTERN_WINE)"
    )]
    NoWine(String),
    #[error("the server sent a password WinBox cannot take as an argument")]
    BadPassword,
    #[error("cannot start {0}: {1}")]
    Spawn(String, String),
}

/// The places WinBox usually is, in order of preference: WinBox 4, then WinBox 3.
/// `var` reads the environment (`HOME`, `LOCALAPPDATA`, …).
pub fn usual_places(os: Os, var: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let under = |key: &str, rest: &[&str]| {
        var(key).filter(|v| !v.is_empty()).map(|base| {
            let mut p = PathBuf::from(base);
            p.extend(rest);
            p
        })
    };
    let mut places: Vec<Option<PathBuf>> = Vec::new();
    match os {
        Os::Windows => {
            places.push(under("LOCALAPPDATA", &["Programs", "WinBox", "WinBox.exe"]));
            places.push(under("ProgramFiles", &["MikroTik", "WinBox", "WinBox.exe"]));
            places.push(under("ProgramFiles", &["WinBox", "WinBox.exe"]));
            places.push(under("USERPROFILE", &["Downloads", "WinBox.exe"]));
            places.push(under("USERPROFILE", &["Desktop", "WinBox.exe"]));
            places.push(Some(PathBuf::from(r"C:\winbox64.exe")));
            places.push(under("USERPROFILE", &["Downloads", "winbox64.exe"]));
            places.push(under("USERPROFILE", &["Desktop", "winbox64.exe"]));
        }
        Os::MacOs => {
            places.push(Some(PathBuf::from("/Applications/WinBox.app")));
            places.push(under("HOME", &["Applications", "WinBox.app"]));
            places.push(Some(PathBuf::from("/Applications/winbox64.exe")));
            places.push(under("HOME", &["Applications", "winbox64.exe"]));
            places.push(under("HOME", &["Downloads", "winbox64.exe"]));
        }
        Os::Linux => {
            places.push(under("HOME", &[".local", "bin", "WinBox"]));
            places.push(Some(PathBuf::from("/opt/winbox/WinBox")));
            places.push(Some(PathBuf::from("/opt/WinBox/WinBox")));
            places.push(Some(PathBuf::from("/usr/local/bin/WinBox")));
            places.push(Some(PathBuf::from("/usr/bin/WinBox")));
            places.push(under(
                "HOME",
                &[".local", "share", "winbox", "winbox64.exe"],
            ));
            places.push(under("HOME", &["winbox64.exe"]));
            places.push(under("HOME", &["Downloads", "winbox64.exe"]));
        }
    }
    places.into_iter().flatten().collect()
}

/// The program to start: `explicit` (from `--winbox` or `POSTERN_WINBOX`) if given, which
/// must exist, else the first of the usual places that does.
pub fn find(
    explicit: Option<PathBuf>,
    os: Os,
    var: &dyn Fn(&str) -> Option<OsString>,
) -> Result<PathBuf, LaunchError> {
    if let Some(path) = explicit {
        return if path.exists() {
            Ok(path)
        } else {
            Err(LaunchError::Missing(path.display().to_string()))
        };
    }
    usual_places(os, var)
        .into_iter()
        .find(|p| p.exists())
        .ok_or(LaunchError::NotFound)
}

/// Whether `path` names a Windows program (WinBox 3, or WinBox 4 for Windows).
fn is_windows_exe(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("exe"))
}

/// WinBox's arguments: `HOST:PORT`, the user, the password.
pub fn arguments(
    connect_to: &str,
    user: &str,
    password: &str,
) -> Result<Vec<OsString>, LaunchError> {
    // WinBox reads options such as `--romon`: nothing it is given may look like one.
    // The host and user were checked with the link; the password comes from the server.
    let password_ok = !password.is_empty()
        && password.len() <= 256
        && !password.starts_with('-')
        && password.chars().all(|c| !c.is_control());
    if !password_ok {
        return Err(LaunchError::BadPassword);
    }
    Ok(vec![connect_to.into(), user.into(), password.into()])
}

/// The program and arguments that start `winbox` on `os` with `args`: a Windows
/// program under Wine (`wine`) outside Windows, a macOS bundle through its executable.
pub fn command_line(
    winbox: &Path,
    os: Os,
    wine: Option<&Path>,
    args: Vec<OsString>,
) -> Result<(PathBuf, Vec<OsString>), LaunchError> {
    if os != Os::Windows && is_windows_exe(winbox) {
        let wine = wine.ok_or_else(|| LaunchError::NoWine(winbox.display().to_string()))?;
        let mut all = vec![winbox.as_os_str().to_owned()];
        all.extend(args);
        return Ok((wine.to_path_buf(), all));
    }
    if os == Os::MacOs && winbox.extension().is_some_and(|e| e == "app") {
        return Ok((bundle_executable(winbox), args));
    }
    Ok((winbox.to_path_buf(), args))
}

/// A macOS bundle's executable: `Contents/MacOS/` and the bundle's `CFBundleExecutable`
/// (read from its Info.plist when it is the XML kind), else the bundle's own name.
fn bundle_executable(bundle: &Path) -> PathBuf {
    let name = std::fs::read_to_string(bundle.join("Contents").join("Info.plist"))
        .ok()
        .and_then(|plist| plist_string(&plist, "CFBundleExecutable"))
        .or_else(|| bundle.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "WinBox".to_owned());
    bundle.join("Contents").join("MacOS").join(name)
}

/// The `<string>` after `<key>KEY</key>` in an XML property list.
fn plist_string(plist: &str, key: &str) -> Option<String> {
    let after = plist.split(&format!("<key>{key}</key>")).nth(1)?;
    let value = after.trim_start().strip_prefix("<string>")?;
    let value = value.split("</string>").next()?.trim();
    let safe = !value.is_empty() && !value.contains(['/', '\\']) && value != "..";
    safe.then(|| value.to_owned())
}

/// Wine, for WinBox 3 outside Windows: `POSTERN_WINE`, else `wine` or `wine64` on
/// `PATH` or where Homebrew puts it.
pub fn find_wine(var: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(path) = var("POSTERN_WINE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> = var("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/opt/homebrew/bin"));
    dirs.push(PathBuf::from("/usr/local/bin"));
    ["wine", "wine64"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Starts `program` with `args`, detached from the launcher's input and output; returns
/// once it has started (its process id).
pub fn start(program: &Path, args: &[OsString]) -> Result<u32, LaunchError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LaunchError::Spawn(program.display().to_string(), e.to_string()))?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_usual_places_come_winbox_4_first() {
        let linux = usual_places(Os::Linux, &env(&[("HOME", "/home/op")]));
        assert_eq!(
            linux.first(),
            Some(&PathBuf::from("/home/op/.local/bin/WinBox"))
        );
        assert!(linux.contains(&PathBuf::from("/home/op/winbox64.exe")));
        let mac = usual_places(Os::MacOs, &env(&[("HOME", "/Users/op")]));
        assert_eq!(
            mac.first(),
            Some(&PathBuf::from("/Applications/WinBox.app"))
        );
        let win = usual_places(Os::Windows, &env(&[("LOCALAPPDATA", "L")]));
        assert_eq!(
            win.first(),
            Some(
                &["L", "Programs", "WinBox", "WinBox.exe"]
                    .iter()
                    .collect::<PathBuf>()
            )
        );
        // No HOME: only the absolute places remain.
        assert!(
            usual_places(Os::Linux, &env(&[]))
                .iter()
                .all(|p| p.is_absolute())
        );
    }

    #[test]
    fn winbox_3_runs_under_wine_outside_windows() {
        let args = arguments("h:1", "u", "p").unwrap();
        let (program, all) = command_line(
            Path::new("/home/op/winbox64.exe"),
            Os::Linux,
            Some(Path::new("/usr/bin/wine")),
            args.clone(),
        )
        .unwrap();
        assert_eq!(program, PathBuf::from("/usr/bin/wine"));
        assert_eq!(all, ["/home/op/winbox64.exe", "h:1", "u", "p"]);
        assert!(matches!(
            command_line(Path::new("/x/WINBOX64.EXE"), Os::MacOs, None, args.clone()),
            Err(LaunchError::NoWine(_))
        ));
        let (program, all) = command_line(
            Path::new(r"C:\winbox64.exe"),
            Os::Windows,
            None,
            args.clone(),
        )
        .unwrap();
        assert_eq!(program, PathBuf::from(r"C:\winbox64.exe"));
        assert_eq!(all, ["h:1", "u", "p"]);
        let (program, _) =
            command_line(Path::new("/nowhere/WinBox.app"), Os::MacOs, None, args).unwrap();
        assert_eq!(
            program,
            PathBuf::from("/nowhere/WinBox.app/Contents/MacOS/WinBox")
        );
    }

    #[test]
    fn a_bundle_s_executable_comes_from_its_info_plist() {
        let plist = "<dict>\n<key>CFBundleExecutable</key>\n  <string>WinBox4</string>\n</dict>";
        assert_eq!(
            plist_string(plist, "CFBundleExecutable").as_deref(),
            Some("WinBox4")
        );
        let evil = "<key>CFBundleExecutable</key><string>../../bin/sh</string>";
        assert_eq!(plist_string(evil, "CFBundleExecutable"), None);
    }

    #[test]
    fn a_password_that_looks_like_an_option_is_refused() {
        for bad in ["", "--romon", "a\nb", &"x".repeat(300)] {
            assert!(
                matches!(arguments("h:1", "u", bad), Err(LaunchError::BadPassword)),
                "{bad:?}"
            );
        }
        assert_eq!(
            arguments("[::1]:8291", "u", "p-w").unwrap(),
            ["[::1]:8291", "u", "p-w"]
        );
    }
}
