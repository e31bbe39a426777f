// Draws the Mermaid diagrams of a page (```mermaid blocks, rendered as <div class="diagram">)
// with the Mermaid bundle the site serves itself (assets/javascripts/mermaid.min.js): nothing
// is loaded from a CDN. Material for MkDocs calls document$ on every page it shows.
mermaid.initialize({
  startOnLoad: false, securityLevel: "strict", theme: "neutral",
  er: { useMaxWidth: false },  // the ER diagram at a readable size; its box scrolls
});
document$.subscribe(function () {
  mermaid.run({ querySelector: "div.diagram" });
});
