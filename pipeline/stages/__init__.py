"""The seven stages of the pipeline, one module each, run as `python -m pipeline <stage>` (dvc.yaml).

- prepare: the real images decoded, resized, split and thinned -> data/prepared, data/holdout
- judge: the classifier of the real data that gates and measures synthetic images -> models/judge
- train: the class-conditional GAN -> models/gan
- generate: synthetic images for the rare classes, behind the judge's gate -> data/synthetic
- merge: real and accepted synthetic images as one versioned dataset -> data/augmented
- evaluate: the quality of the synthetic images and the downstream arms -> reports/metrics.json, tables
- report: figures and the report page -> reports/figures, reports/report.html

Each has `run(params, paths)`. Stages talk only through files: no stage imports another, and the
library beneath them (the rest of `pipeline/`) never imports a stage.
"""
