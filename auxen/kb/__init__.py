"""Knowledge bases: reading documents, chunking, embeddings, the LanceDB store and
retrieval. Everything here works for one workspace at a time; the relational rows
(names, titles, ids) are kept by `auxen.tools.kb`, the text only by `store`."""
