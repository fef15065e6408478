// Typeset the \( \) and \[ \] spans that pymdownx.arithmatex (generic mode) leaves in the page.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".arithmatex").forEach(function (element) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
  document.body.setAttribute("data-math-typeset", String(document.querySelectorAll(".katex").length));
});
