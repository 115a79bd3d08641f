//! Install surface, run as the real binary: `completions` for each shell and `man`, both
//! generated from the parser's own definition (issue 15: "kanban-governor completions bash
//! prints a completion script"; the man page mentions every command).

use std::process::{Command, Output};

fn governor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kanban-governor"))
        .env_clear()
        .args(args)
        .output()
        .expect("the kanban-governor binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The commands, as `--help` lists them (so a new command is covered without editing this).
fn commands() -> Vec<String> {
    let help = stdout(&governor(&["--help"]));
    let list = help
        .split("Commands:")
        .nth(1)
        .expect("--help has a Commands: section");
    let names: Vec<String> = list
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "help")
        .collect();
    assert!(names.len() >= 9, "{names:?} from {help}");
    names
}

#[test]
fn completions_bash_prints_a_script_that_completes_every_command() {
    let out = governor(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = stdout(&out);
    assert!(script.contains("complete -F"), "{script}");
    for c in commands() {
        assert!(script.contains(&c), "bash completion lacks {c}");
    }
    assert!(
        script.contains("--file-only"),
        "flags of commands complete too"
    );
}

#[test]
fn completions_exist_for_zsh_fish_elvish_and_powershell() {
    for (shell, marker) in [
        ("zsh", "#compdef kanban-governor"),
        ("fish", "complete -c kanban-governor"),
        ("elvish", "edit:completion:arg-completer[kanban-governor]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = governor(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("tick"), "{shell}");
    }
}

#[test]
fn an_unknown_shell_exits_2_naming_the_shells_there_are() {
    let out = governor(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tcsh") && err.contains("bash, elvish, fish, powershell, zsh"),
        "{err}"
    );
}

#[test]
fn the_man_page_is_roff_and_mentions_every_command_and_the_environment() {
    let out = governor(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = stdout(&out);
    assert!(page.contains(".TH kanban-governor 1"), "{page}");
    for c in commands() {
        // roff escapes '-' as '\-'.
        let name = format!("kanban\\-governor {}", c.replace('-', "\\-"));
        assert!(page.contains(&name), "man page lacks {name}");
    }
    for section in [".SH SYNOPSIS", ".SH COMMANDS", ".SH ENVIRONMENT"] {
        assert!(page.contains(section), "{section}");
    }
    assert!(page.contains("KANBAN_GOVERNOR_CONFIG"));
}
