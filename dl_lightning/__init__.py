"""Pure modelling: plain nets, one LightningModule per family, data. Imports no mlflow, ray, onnx or pipelines."""
