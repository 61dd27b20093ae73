"""MLflow integration: run tracking, the bundle as a pyfunc model, the Model Registry. Imports
mlflow; the serving path (toolkit.runtime) never imports this package."""
