"""twotower: Spark feature-engineering jobs and a TensorFlow trainer for two-tower recommenders."""
from setuptools import find_packages, setup

# Versions are chosen together: delta-spark 4.3.x is built for Spark 4.1 (its Maven artifact
# is delta-spark_4.1_2.13, fetched by build/jars/pom.xml) and pins pyspark <= 4.1.1.
SPARK = ["pyspark>=4.1.1,<4.2", "delta-spark>=4.3.1,<4.4"]
CORE = [
    "pyarrow>=15,<27",
    "numpy>=1.26,<3",
    "pandas>=2.2,<3",
    "scikit-learn>=1.4,<2",
    "click>=8.1,<9",
    "google-crc32c>=1.5,<2",
]

setup(
    name="twotower",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["twotower", "twotower.*", "twotower_features*", "twotower_model*"]),
    py_modules=[],
    package_data={"twotower": ["experiments/*.toml"], "twotower_features": ["log4j2.properties"]},
    install_requires=SPARK + CORE,
    extras_require={
        # The trainer runs on CPU or GPU. `tensorflow` on a GPU box, `tensorflow-cpu` elsewhere.
        # faiss-cpu: the retrieval index of `twotower export` and of `evaluate` past its exact limit.
        "train": ["tensorflow>=2.16,<2.22", "faiss-cpu>=1.8,<2"],
        "train-cpu": ["tensorflow-cpu>=2.16,<2.22", "faiss-cpu>=1.8,<2"],
        # pytest < 9.2: from 9.2 xdist's --dist loadgroup silently stops grouping
        # (pytest-dev/pytest-xdist#1386), and `make test` relies on it (tests/conftest.py)
        "test": ["pytest>=8,<9.2", "pytest-timeout>=2.3,<3", "pytest-xdist>=3.5,<4"],
        # `experiment run` / `report`: MLflow tracking (skinny: full mlflow pins pyarrow < 26 and
        # pulls a web server; its SQLite store needs SQLAlchemy and Alembic) and the report's plots.
        "catalog": ["mlflow-skinny>=3.10,<4", "sqlalchemy>=2,<3", "alembic>=1.13,<2", "matplotlib>=3.8,<4"],
        # `make bench`: the DuckDB baselines the feature stages are measured against.
        "bench": ["duckdb>=1.1,<3"],
    },
    entry_points={"console_scripts": ["twotower=twotower.cli:main"]},
)
