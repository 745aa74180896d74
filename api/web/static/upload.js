// Upload progress: the same multipart form the page posts without script, sent with
// XMLHttpRequest so the progress bar can follow the bytes. Nothing else is done here.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("upload");
  var bar = document.getElementById("progress");
  var status = document.getElementById("upload-status");
  if (!form || !bar || !window.XMLHttpRequest || !window.FormData) { return; }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) {
        var percent = Math.floor((e.loaded / e.total) * 100);
        bar.value = percent;
        bar.textContent = percent + "%";
        bar.setAttribute("data-loaded", String(e.loaded));
      }
    });
    request.addEventListener("load", function () {
      if (request.status >= 200 && request.status < 300 && request.responseURL) {
        window.location.assign(request.responseURL);
        return;
      }
      // The server's error page, shown as it would be without script.
      var page = new DOMParser().parseFromString(request.responseText, "text/html");
      document.body.replaceWith(document.adoptNode(page.body));
    });
    request.addEventListener("error", function () {
      status.textContent = status.getAttribute("data-failed");
    });
    status.textContent = status.getAttribute("data-sending");
    form.querySelector("button[type=submit]").disabled = true;
    request.send(new FormData(form));
  });
});
