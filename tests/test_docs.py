"""The commands of README.md and docs/*.md name flags and config fields that
exist (nothing is run, nothing is trained).

Marker convention: a fence opened with ```bash holds commands that run as
written, from the repository root (placeholders such as DIR, PATH or N stand
for values; `#` starts a comment; a trailing backslash continues a line).
A fence opened with ```text is a synopsis (`[--optional]`, `<name>`) or
other text, and is not checked. Every fence names one of the two.

For each command in a bash fence (split at &&, ||, ;, |; leading VAR=value
assignments skipped):
- `python -m MODULE ...`: MODULE imports (importlib.util.find_spec); for the
  project's own modules every `--flag` is one the module defines
  (flags.DEFINE_*, config_flags.DEFINE_config_*, argparse's add_argument,
  read from its source), one of absl's own, `--noFLAG` for a boolean FLAG,
  or spelled literally in its source (aliases it rewrites itself, such as
  benchmark's --compare-torch). `--config=FILE[:OPTION]` names a config
  file that exists and loads with that option, and `--config.X.Y=...`
  names a field X.Y of that config.
- `python FILE.py ...`: the file exists; its flags as above.
- `bash FILE`: the file exists.
- anything else: the program is installed (on PATH or beside this
  interpreter, e.g. `tensorboard` from the project's dependencies).
"""

import ast
import functools
import importlib.util
import os
import pathlib
import re
import shlex
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
PROJECT_PACKAGES = ("alexnet_jax", "experiments")
FENCE = re.compile(r"^```(\S*)\s*$")
# Flags absl handles itself (absl.app defines the help flags when it runs).
ABSL_SPECIAL = {"help", "helpshort", "helpfull", "helpxml", "flagfile",
                "undefok", "?"}


def fences(path: pathlib.Path):
  """(language, first line number, text) of each fenced block."""
  out, lang, start, body = [], None, 0, []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    m = FENCE.match(line)
    if lang is None and m:
      lang, start, body = m.group(1), number, []
    elif lang is not None and line.strip() == "```":
      out.append((lang, start, "\n".join(body)))
      lang = None
    elif lang is not None:
      body.append(line)
  assert lang is None, f"{path}: a fence opened at line {start} is not closed"
  return out


def commands(text: str):
  """The commands of a bash block, each a list of words."""
  text = re.sub(r"\\\n", " ", text)
  out = []
  for line in text.splitlines():
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = []
    for token in lexer:
      if token in ("&&", "||", ";", "|", "&"):
        if words:
          out.append(words)
        words = []
      else:
        words.append(token)
    if words:
      out.append(words)
  return out


def _runnable():
  cases = []
  for path in DOCS:
    for lang, line, text in fences(path):
      if lang == "bash":
        for words in commands(text):
          cases.append(pytest.param(
              words, id=f"{path.relative_to(ROOT)}:{line}:{' '.join(words)[:60]}"))
  return cases


@functools.lru_cache(maxsize=None)
def defined_flags(source_path: str):
  """(flag names, boolean flag names, config flag names, source) of a
  Python file."""
  source = pathlib.Path(source_path).read_text()
  names, bool_names, config_names = set(), set(), set()
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Call):
      continue
    func = node.func
    fname = func.attr if isinstance(func, ast.Attribute) else getattr(
        func, "id", "")
    if fname.startswith("DEFINE"):
      arg = node.args[0] if node.args else next(
          (k.value for k in node.keywords if k.arg == "name"), None)
      if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        names.add(arg.value)
        if fname.startswith("DEFINE_config"):
          config_names.add(arg.value)
        if fname.startswith("DEFINE_bool"):
          bool_names.add(arg.value)
    elif fname == "add_argument":
      for arg in node.args:
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--"):
          names.add(arg.value[2:])
  return names, bool_names, config_names, source


@functools.lru_cache(maxsize=None)
def absl_flags():
  from absl import app, flags, logging  # noqa: F401  (defines their flags)
  out = set(ABSL_SPECIAL)
  for module, module_flags in flags.FLAGS.flags_by_module_dict().items():
    if module.startswith("absl"):
      out.update(f.name for f in module_flags)
  return out


@functools.lru_cache(maxsize=None)
def load_config(spec: str):
  """get_config() of `FILE[:OPTION]`, as config_flags calls it."""
  path, _, option = spec.partition(":")
  assert (ROOT / path).is_file(), f"config file {path} does not exist"
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  name = "_docs_config_" + re.sub(r"\W", "_", path)
  module_spec = importlib.util.spec_from_file_location(name, ROOT / path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(option) if option else module.get_config()


def has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      if part not in node:
        return False
      node = node[part]
    except TypeError:  # A leaf: no fields below it.
      return False
  return True


def check_flags(words, source_path: str, what: str):
  names, bool_names, config_names, source = defined_flags(source_path)
  configs = {}
  for word in words:
    if not word.startswith("--"):
      continue
    name, _, value = word[2:].partition("=")
    if name in config_names:
      configs[name] = value
  for word in words:
    if not word.startswith("--"):
      continue
    name = word[2:].partition("=")[0]
    head, dot, field = name.partition(".")
    if dot and head in config_names:
      assert head in configs, f"{what}: {word} without --{head}=FILE"
      config = load_config(configs[head])
      assert has_field(config, field), (
          f"{what}: {configs[head]} has no field {field}")
      continue
    known = (name in names or name in absl_flags()
             or (name.startswith("no") and name[2:] in bool_names)
             or f'"--{name}' in source)
    assert known, f"{what}: {source_path} defines no flag --{name}"
  for name, value in configs.items():
    if value:
      load_config(value)


def is_python(program: str) -> bool:
  return re.fullmatch(r"python[0-9.]*", os.path.basename(program)) is not None


@pytest.mark.parametrize("words", _runnable())
def test_command(words):
  what = " ".join(words)
  while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
    words = words[1:]
  program, args = words[0], words[1:]
  if is_python(program):
    if args[0] == "-m":
      module = args[1]
      spec = importlib.util.find_spec(module)
      assert spec is not None, f"{what}: no module {module}"
      if module.split(".")[0] in PROJECT_PACKAGES:
        check_flags(args[2:], spec.origin, what)
    else:
      script = ROOT / args[0]
      assert script.is_file(), f"{what}: no file {args[0]}"
      check_flags(args[1:], str(script), what)
  elif program == "bash":
    assert (ROOT / args[0]).is_file(), f"{what}: no file {args[0]}"
  else:
    name = os.path.basename(program)
    here = os.path.dirname(sys.executable)
    assert shutil.which(name) or shutil.which(name, path=here), (
        f"{what}: {name} is not installed")


def test_fences_are_marked():
  for path in DOCS:
    for lang, line, _ in fences(path):
      assert lang in ("bash", "text"), (
          f"{path.relative_to(ROOT)}:{line}: a fence opens with ```{lang}; "
          "use ```bash (commands that run) or ```text")


def test_readme_starts_with_the_two_commands():
  first, second = [text for _, _, text in fences(ROOT / "README.md")[:2]]
  assert first.startswith("python3 -m venv .venv && .venv/bin/pip install")
  assert "alexnet_jax.main --config=configs/smoke.py" in first
  assert second.startswith(".venv/bin/pip install")
  assert "-m pytest" in second


def test_relative_links_resolve():
  link = re.compile(r"\]\(([^)\s]+)\)")
  for path in DOCS:
    for target in link.findall(path.read_text()):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      resolved = path.parent / target.split("#")[0]
      assert resolved.exists(), (
          f"{path.relative_to(ROOT)}: link {target} does not resolve")
