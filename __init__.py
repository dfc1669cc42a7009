"""re-po, installed as the package `re_po`: this folder's cli.py, data/, pipeline/ and stages/ are re_po.cli,
re_po.data, re_po.pipeline and re_po.stages (pyproject.toml maps them), so a user's own `data` or `pipeline`
package never shadows re-po's, nor re-po's theirs. The command is `repo`.
"""
