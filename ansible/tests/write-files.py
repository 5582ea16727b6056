#!/usr/bin/env python3
"""Writes the files tests/render.yml rendered for one host and makes the folders its configs
name: a JSON object on stdin, {"files": {"path": "content", ...}, "folders": ["path", ...]},
every path absolute. One process per host and role, instead of one
Ansible module per file (the render has to stay fast)."""
import json
import os
import sys

job = json.load(sys.stdin)
for folder in job["folders"]:
    os.makedirs(folder, exist_ok=True)
for path, content in job["files"].items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(content if content.endswith("\n") else content + "\n")
    os.chmod(path, 0o640)
