"""One runner per ablation or figure; each writes runs/<name>/ (results.json, figure.png)."""
