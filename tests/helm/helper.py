#!/usr/bin/env python3
"""Helpers for tests/helm_chart.rs, run with the Python of helm-template's venv (it has PyYAML and
helm_sdkpy).

  helper.py to-json           YAML documents on stdin -> one JSON array on stdout
  helper.py lint CHART        helm lint (helm_sdkpy's Lint action) -> {"messages": [...]} on stdout
  helper.py undocumented F    fields of the values file F ("-": stdin) without a `# --` comment above

helm_sdkpy returns lint messages with their severity (1 info, 2 warning, 3 error) and path, but
their error text does not survive its JSON encoding; render the chart with helm-template to see it.
"""
import asyncio, json, os, sys, tempfile


def to_json():
    import yaml
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
    json.dump(docs, sys.stdout)


def lint(chart):
    # Helm reads HELM_* at start-up: point its cache/config/data at a scratch folder first.
    tmp = tempfile.mkdtemp(prefix="helm-lint-")
    for var, sub in [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")]:
        os.environ[var] = os.path.join(tmp, sub)
    import helm_sdkpy
    cfg = helm_sdkpy.Configuration(namespace="default")
    result = asyncio.run(helm_sdkpy.Lint(cfg).run(os.path.abspath(chart)))
    names = {0: "unknown", 1: "info", 2: "warning", 3: "error"}
    messages = [{"severity": m.get("Severity", 0), "level": names.get(m.get("Severity", 0), "?"),
                 "path": m.get("Path", ""), "error": m.get("Err")} for m in result.get("Messages") or []]
    json.dump({"charts": result.get("TotalChartsLinted"), "messages": messages}, sys.stdout)


def undocumented(text):
    """Dotted paths of the fields with no `# --` comment block right above them. Keys inside a
    documented field's default value (e.g. podSecurityContext's) need none, nor do sections (a key
    whose value is a mapping of further keys), whose own keys are checked instead."""
    lines = text.splitlines()
    indent = lambda l: len(l) - len(l.lstrip())
    content = lambda l: l.strip() and not l.lstrip().startswith("#")
    stack, missing = [], []  # stack: (indent, key, documented)
    for i, line in enumerate(lines):
        body = line.lstrip()
        if not content(line) or body.startswith("-") or ":" not in body:
            continue
        key, rest = body.split(":", 1)
        while stack and stack[-1][0] >= indent(line):
            stack.pop()
        above = []
        for l in reversed(lines[:i]):
            if not l.lstrip().startswith("#"):
                break
            above.append(l.lstrip())
        documented = any(l.startswith("# --") for l in above)
        following = next((l for l in lines[i + 1:] if content(l)), None)
        section = not rest.split("#")[0].strip() and following is not None \
            and indent(following) > indent(line) and not following.lstrip().startswith("-")
        if not any(d for _, _, d in stack) and not documented and not section:
            missing.append(".".join([k for _, k, _ in stack] + [key]))
        stack.append((indent(line), key, documented))
    return missing


if __name__ == "__main__":
    if sys.argv[1:2] == ["to-json"]:
        to_json()
    elif sys.argv[1:2] == ["lint"] and len(sys.argv) == 3:
        lint(sys.argv[2])
    elif sys.argv[1:2] == ["undocumented"] and len(sys.argv) == 3:
        text = sys.stdin.read() if sys.argv[2] == "-" else open(sys.argv[2]).read()
        json.dump(undocumented(text), sys.stdout)
    else:
        sys.exit(__doc__)
