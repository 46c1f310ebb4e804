"""Pure modelling: plain nets, one LightningModule per family, data loading. Imports no mlflow, ray, onnx or pipelines."""
