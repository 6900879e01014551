/*
 * Smart Support chat for other sites. Add to any page:
 *
 *   <script src="https://support.example.com/embed.js" async></script>
 *
 * and a "Chat with us" button opens the customer chat in a panel; or mount it inline in an
 * element of yours with  data-target="#support-chat"  on the script tag. The chat runs in an
 * iframe of this server's /embed page, so it talks to this server as its own origin (no cookies,
 * no access to the host page). Options (attributes of the script tag):
 *   data-target  CSS selector of an element to fill with the chat (default: a floating button)
 *   data-label   the button's text (default "Chat with us")
 */
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || !script.src) return;
  var base = new URL(script.src, location.href).origin;
  var label = script.getAttribute('data-label') || 'Chat with us';
  var selector = script.getAttribute('data-target');

  function frame() {
    var iframe = document.createElement('iframe');
    iframe.src = base + '/embed';
    iframe.title = 'Support chat';
    iframe.setAttribute('data-smart-support', 'chat');
    iframe.style.cssText = 'border:0;width:100%;height:100%;display:block;background:#fff';
    return iframe;
  }

  function mount() {
    if (selector) {
      var target = document.querySelector(selector);
      if (!target) {
        console.warn('smart-support embed.js: no element matches ' + selector);
        return;
      }
      if (!target.style.height) target.style.minHeight = target.style.minHeight || '32rem';
      target.appendChild(frame());
      return;
    }
    var panel = document.createElement('div');
    panel.style.cssText =
      'position:fixed;right:1rem;bottom:4.5rem;width:min(24rem,calc(100vw - 2rem));height:min(36rem,calc(100vh - 6rem));' +
      'box-shadow:0 8px 30px rgba(0,0,0,.25);border-radius:12px;overflow:hidden;z-index:2147483646;display:none;background:#fff';
    var button = document.createElement('button');
    button.type = 'button';
    button.textContent = label;
    button.setAttribute('aria-expanded', 'false');
    button.setAttribute('data-smart-support', 'open');
    button.style.cssText =
      'position:fixed;right:1rem;bottom:1rem;z-index:2147483647;padding:.7rem 1.1rem;border:0;border-radius:999px;' +
      'background:#1d4ed8;color:#fff;font:600 15px/1.2 system-ui,sans-serif;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.2)';
    button.addEventListener('click', function () {
      var open = panel.style.display === 'none';
      if (open && !panel.firstChild) panel.appendChild(frame());
      panel.style.display = open ? 'block' : 'none';
      button.setAttribute('aria-expanded', String(open));
    });
    document.body.appendChild(panel);
    document.body.appendChild(button);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', mount);
  else mount();
})();
