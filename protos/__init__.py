"""Wire format: what goes between server and clients, and how many bytes it really takes."""
