"""The SparkApplication's main file (``mainApplicationFile: local:///opt/cifarflow/main.py``).

spark-submit runs it with the application arguments, e.g. ``preprocess --raw ... --out ...``; the master, the
executors and their resources come from spark-submit, so ``cifarflow preprocess`` runs without ``--master``.
"""

from cifarflow.cli import main

if __name__ == "__main__":
    main()
