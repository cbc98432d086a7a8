"""The top of the stack: `sgdd run`, which runs collect -> train -> eval from one file."""
